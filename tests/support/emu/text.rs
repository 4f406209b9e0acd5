//! Small helpers every emulator needs: random tokens of a service's alphabet, a request
//! target's query as a map, a JSON response.

use std::collections::HashMap;

use serde_json::Value;

use super::server::Response;

/// Upper-case letters and digits (Graph's ids).
pub const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// Letters and digits (OAuth tokens).
pub const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// URL-safe base64's alphabet (Dropbox's ids and cursors).
pub const URL_SAFE: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";

/// `n` random characters of `alphabet`.
pub fn random_of(alphabet: &[u8], n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// The query of a request target ("/path?a=1&b=2"), decoded.
pub fn query_map(target: &str) -> HashMap<String, String> {
    target
        .split_once('?')
        .map(|(_, q)| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// A JSON body with its content type.
pub fn json_response(status: u16, v: Value) -> Response {
    Response::new(status, v.to_string()).header("Content-Type", "application/json")
}
