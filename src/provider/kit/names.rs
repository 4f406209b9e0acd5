//! Local names for remote items, reversible: services whose names a path cannot hold
//! as they are (Drive allows `/`, `.` and `..` in names) or whose folders may hold several
//! items of one name (Drive, Jira attachments) get local names that are unique in their
//! folder and map back to exactly one item.
//!
//! - [`encode`] / [`decode`]: `/` becomes `∕` (U+2215); a literal `∕` or `‛` (U+201B) is
//!   escaped with `‛`; `.`, `..` and the empty name become `‛.`, `‛..` and `‛`. A local name
//!   encoding could never produce is refused, so every accepted name shows up unchanged in
//!   the next listing.
//! - [`assign_unique`]: equal names in one folder are told apart by id order — the smallest
//!   id keeps the name, the others become `name (2).ext`, `name (3).ext`, ...

use std::collections::{HashMap, HashSet};

use crate::provider::ProviderError;

/// Stands in for `/`, which Drive allows in names and a path cannot hold.
pub const SLASH: char = '\u{2215}'; // ∕ DIVISION SLASH
/// Escapes a literal [`SLASH`] or [`ESCAPE`] in a remote name.
pub const ESCAPE: char = '\u{201B}'; // ‛ SINGLE HIGH-REVERSED-9 QUOTATION MARK

/// The local form of a remote name (before duplicate numbering and export extensions).
pub fn encode(remote: &str) -> String {
    // "." and ".." are legal Drive names but mean something else in a path.
    if remote.is_empty() || remote == "." || remote == ".." {
        return format!("{ESCAPE}{remote}");
    }
    let mut out = String::with_capacity(remote.len());
    for c in remote.chars() {
        match c {
            '/' => out.push(SLASH),
            SLASH | ESCAPE => {
                out.push(ESCAPE);
                out.push(c);
            }
            // A NUL cannot be in a local name either; Drive allows it in theory.
            '\0' => out.push('\u{2400}'),
            c => out.push(c),
        }
    }
    out
}

/// The remote name for a local one. Names that [`encode`] would never produce (a lone
/// escape character) are refused, so that every name we accept shows up again unchanged in
/// the next listing.
pub fn decode(local: &str) -> Result<String, ProviderError> {
    let invalid = || ProviderError::InvalidName(local.to_owned());
    if local.is_empty() || local == "." || local == ".." || local.contains('/') {
        return Err(invalid());
    }
    if let Some(rest) = local.strip_prefix(ESCAPE) {
        if rest.is_empty() || rest == "." || rest == ".." {
            return Ok(rest.to_owned());
        }
    }
    let mut out = String::with_capacity(local.len());
    let mut chars = local.chars();
    while let Some(c) = chars.next() {
        match c {
            SLASH => out.push('/'),
            ESCAPE => match chars.next() {
                Some(n @ (SLASH | ESCAPE)) => out.push(n),
                _ => return Err(invalid()),
            },
            c => out.push(c),
        }
    }
    if encode(&out) != local {
        return Err(invalid());
    }
    Ok(out)
}

/// `stem (n).ext`, keeping the extension where a file manager expects it.
fn numbered(name: &str, n: usize) -> String {
    match name.rfind('.') {
        Some(i) if i > 0 => format!("{} ({n}){}", &name[..i], &name[i..]),
        _ => format!("{name} ({n})"),
    }
}

/// Unique local names for the entries of one folder, given `(id, display name)` pairs.
/// Within a group of equal display names the smallest id keeps the name and the others get
/// ` (2)`, ` (3)`, ... in id order, skipping numbers whose result is already taken.
pub fn assign_unique(items: &[(String, String)]) -> Vec<String> {
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (_, name)) in items.iter().enumerate() {
        groups.entry(name.as_str()).or_default().push(i);
    }
    let mut taken: HashSet<String> = groups.keys().map(|s| s.to_string()).collect();
    let mut out = vec![String::new(); items.len()];
    // Deterministic whatever order the server listed in.
    let mut names: Vec<&str> = groups.keys().copied().collect();
    names.sort_unstable();
    for name in names {
        let mut idx = groups[name].clone();
        idx.sort_by(|a, b| items[*a].0.cmp(&items[*b].0));
        out[idx[0]] = name.to_owned();
        let mut n = 2;
        for &i in &idx[1..] {
            let mut candidate = numbered(name, n);
            while taken.contains(&candidate) {
                n += 1;
                candidate = numbered(name, n);
            }
            taken.insert(candidate.clone());
            out[i] = candidate;
            n += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_roundtrip() {
        for name in [
            "plain.txt",
            "a/b",
            "/",
            "x\u{2215}y",
            "q\u{201B}",
            "\u{201B}\u{2215}/",
            ".",
            "..",
            "",
        ] {
            let local = encode(name);
            assert!(!local.contains('/'), "{local:?}");
            assert_eq!(decode(&local).unwrap(), name, "{name:?} via {local:?}");
        }
        assert_eq!(encode("a/b"), "a\u{2215}b");
        assert!(decode("lone\u{201B}x").is_err());
        assert!(decode("..").is_err());
    }

    #[test]
    fn duplicates_numbered_by_id() {
        let items = vec![
            ("id3".to_string(), "a.txt".to_string()),
            ("id1".to_string(), "a.txt".to_string()),
            ("id2".to_string(), "a (2).txt".to_string()),
            ("id4".to_string(), "a.txt".to_string()),
            ("id5".to_string(), "README".to_string()),
            ("id6".to_string(), "README".to_string()),
        ];
        let names = assign_unique(&items);
        assert_eq!(
            names,
            vec![
                "a (3).txt",
                "a.txt",
                "a (2).txt",
                "a (4).txt",
                "README",
                "README (2)"
            ]
        );
    }
}
