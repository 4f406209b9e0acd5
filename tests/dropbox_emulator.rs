//! The Dropbox emulator held to the reference (`shared/reference/provider-apis.md` §3,
//! `readonly-sources.md` §4.6) and to the Stone spec's examples, kept in
//! `tests/fixtures/dropbox/` (see its SOURCES.md): each test speaks plain HTTP to it and
//! checks one documented behaviour, so that the Dropbox provider is then tested against
//! something that behaves like Dropbox.

#[path = "support/dropbox_emulator.rs"]
mod dropbox_emulator;
#[path = "support/emu/mod.rs"]
mod emu;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dropbox_emulator::{DropboxConfig, DropboxEmulator, Fault};
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/dropbox/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

struct Api {
    emu: DropboxEmulator,
    http: reqwest::Client,
    token: String,
}

impl Api {
    fn new(cfg: DropboxConfig) -> Api {
        let emu = DropboxEmulator::start(cfg);
        let (token, _) = emu.issue_tokens();
        Api {
            emu,
            http: reqwest::Client::new(),
            token,
        }
    }

    /// An RPC call with a JSON argument: (status, body as JSON or as text).
    async fn rpc(&self, route: &str, arg: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/{route}", self.emu.api_base()))
            .bearer_auth(&self.token)
            .header("Content-Type", "application/json")
            .body(arg.to_string());
        reply(r).await
    }

    /// A content-host call with its argument in `Dropbox-API-Arg`.
    async fn content(&self, route: &str, arg: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}/{route}", self.emu.content_base()))
            .bearer_auth(&self.token)
            .header("Dropbox-API-Arg", arg)
            .header("Content-Type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn upload(&self, path: &str, data: &[u8]) -> Value {
        let arg = json!({"path": path, "mode": "overwrite"}).to_string();
        let r = self.content("files/upload", &arg, data.to_vec()).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

async fn reply(r: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

#[tokio::test]
async fn metadata_is_tagged_where_the_union_is_returned_and_bare_elsewhere() {
    let api = Api::new(DropboxConfig::default());
    let uploaded = api
        .upload("/Homework/math/Prime_Numbers.txt", b"2 3 5 7")
        .await;
    api.upload("/Homework/readme.txt", b"r").await;
    // files/upload returns a bare FileMetadata: the fixture's keys less the tag and the
    // sharing facets this account has none of.
    let mut want = keys(&fixture("file_metadata.stone-example.json"));
    want.remove(".tag");
    want.remove("has_explicit_shared_members");
    assert_eq!(keys(&uploaded), want);
    assert_eq!(
        uploaded["content_hash"],
        json!(cloudmount::provider::dropbox::hash::content_hash(
            b"2 3 5 7"
        ))
    );

    let (status, m) = api
        .rpc(
            "files/get_metadata",
            json!({"path": "/homework/MATH/prime_numbers.TXT"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(m[".tag"], "file");
    assert_eq!(m["name"], "Prime_Numbers.txt");
    assert_eq!(m["path_lower"], "/homework/math/prime_numbers.txt");
    // Only the last component's case is sure.
    assert!(m["path_display"]
        .as_str()
        .unwrap()
        .ends_with("/Prime_Numbers.txt"));

    let (status, page) = api
        .rpc(
            "files/list_folder",
            json!({"path": "/Homework", "limit": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&page),
        keys(&fixture("list_folder_result.stone-example.json"))
    );
    assert_eq!(page["entries"][0][".tag"], "folder");
    assert_eq!(page["has_more"], true, "a limit of one pages");
    let (_, rest) = api
        .rpc(
            "files/list_folder/continue",
            json!({"cursor": page["cursor"]}),
        )
        .await;
    assert_eq!(rest["entries"][0]["name"], "readme.txt");
    assert_eq!(rest["has_more"], false);

    let (status, created) = api
        .rpc(
            "files/create_folder_v2",
            json!({"path": "/New", "autorename": false}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(created["metadata"].get(".tag").is_none(), "{created}");

    let (_, revs) = api
        .rpc(
            "files/list_revisions",
            json!({"path": "/Homework/math/Prime_Numbers.txt"}),
        )
        .await;
    assert_eq!(
        keys(&revs),
        keys(&fixture("list_revisions_result.stone-example.json"))
    );
    assert!(revs["entries"][0].get(".tag").is_none());
}

#[tokio::test]
async fn errors_are_unions_on_409_and_plain_text_on_400() {
    let api = Api::new(DropboxConfig::default());
    let (status, e) = api
        .rpc("files/get_metadata", json!({"path": "/missing"}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        e["error"],
        json!({".tag": "path", "path": {".tag": "not_found"}})
    );
    assert!(e["error_summary"]
        .as_str()
        .unwrap()
        .starts_with("path/not_found/"));

    // The root is the empty path, never "/".
    let (status, e) = api.rpc("files/list_folder", json!({"path": "/"})).await;
    assert_eq!(status, 400);
    assert!(e.as_str().unwrap().contains("empty string"), "{e}");
    // Unknown fields and paths without a leading slash are refused in plain text.
    let (status, e) = api
        .rpc("files/list_folder", json!({"path": "", "recursiv": true}))
        .await;
    assert_eq!((status, e.is_string()), (400, true));
    let (status, _) = api.rpc("files/get_metadata", json!({"path": "a/b"})).await;
    assert_eq!(status, 400);
    // A route without an argument refuses a JSON content type with no body...
    let r = api
        .http
        .post(format!("{}/users/get_space_usage", api.emu.api_base()))
        .bearer_auth(&api.token)
        .header("Content-Type", "application/json");
    assert_eq!(reply(r).await.0, 400);
    // ...and answers one without either.
    let r = api
        .http
        .post(format!("{}/users/get_space_usage", api.emu.api_base()))
        .bearer_auth(&api.token);
    let (status, usage) = reply(r).await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&usage),
        keys(&fixture("space_usage.stone-example.json"))
    );

    // Content routes live on the content host only, and want their argument in ASCII.
    let (status, _) = api.rpc("files/download", json!({"path": "/x"})).await;
    assert_eq!(status, 400);
    let r = api
        .http
        .post(format!("{}/files/upload", api.emu.content_base()))
        .bearer_auth(&api.token)
        .header(
            "Dropbox-API-Arg",
            reqwest::header::HeaderValue::from_bytes("{\"path\": \"/Ü\"}".as_bytes()).unwrap(),
        )
        .header("Content-Type", "application/octet-stream")
        .body("x");
    assert_eq!(reply(r).await.0, 400);
    let escaped = r#"{"path": "/\u00dcber.txt", "mode": "add"}"#;
    let r = api.content("files/upload", escaped, b"x".to_vec()).await;
    assert_eq!(r.status(), 200);
    assert!(api.emu.exists("/Über.txt"));

    // Names Dropbox refuses, as a WriteError under `reason`.
    let arg = json!({"path": "/desktop.ini", "mode": "add"}).to_string();
    let r = api.content("files/upload", &arg, b"x".to_vec()).await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"][".tag"], "path");
    assert_eq!(e["error"]["reason"][".tag"], "disallowed_name");
}

#[tokio::test]
async fn rate_limits_carry_their_reason_and_retry_after_in_body_and_header() {
    let api = Api::new(DropboxConfig::default());
    for reason in ["too_many_requests", "too_many_write_operations"] {
        api.emu.inject(
            Fault::RateLimit {
                reason,
                retry_after: 7,
            },
            1,
        );
        let resp = api
            .http
            .post(format!("{}/files/list_folder", api.emu.api_base()))
            .bearer_auth(&api.token)
            .header("Content-Type", "application/json")
            .body(json!({"path": ""}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "7");
        let e: Value = resp.json().await.unwrap();
        // The tag sits in `reason`, not at the top of `error` (provider-apis §3.4).
        assert_eq!(e["error"]["reason"][".tag"], reason);
        assert_eq!(e["error"]["retry_after"], 7);
        assert!(e["error"].get(".tag").is_none());
    }
}

#[tokio::test]
async fn tokens_expire_refresh_tokens_stay_and_revoking_ends_both() {
    let api = Api::new(DropboxConfig::default());
    api.emu.expire_all_access_tokens();
    let (status, e) = api.rpc("files/list_folder", json!({"path": ""})).await;
    assert_eq!(status, 401);
    assert_eq!(e["error"][".tag"], "expired_access_token");

    let cfg = api.emu.config();
    let (_, refresh) = api.emu.issue_tokens();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", cfg.client_id.as_str()),
        ("client_secret", cfg.client_secret.as_str()),
    ];
    let (status, t) = reply(api.http.post(api.emu.token_url()).form(&form)).await;
    assert_eq!(status, 200);
    assert!(
        t.get("refresh_token").is_none(),
        "Dropbox's refresh tokens do not rotate"
    );
    assert!(t["access_token"].as_str().unwrap().starts_with("sl."));
    let (status, _) = reply(api.http.post(api.emu.token_url()).form(&form)).await;
    assert_eq!(status, 200, "the same refresh token works again");

    let access = t["access_token"].as_str().unwrap();
    let revoke = api.http.post(api.emu.revoke_url()).bearer_auth(access);
    assert_eq!(reply(revoke).await.0, 200);
    assert!(!api.emu.refresh_token_valid(&refresh));
    let (status, _) = reply(api.http.post(api.emu.token_url()).form(&form)).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn upload_sessions_check_offsets_and_finish_commits() {
    let api = Api::new(DropboxConfig::default());
    let start = api
        .content(
            "files/upload_session/start",
            r#"{"close": false}"#,
            b"0123".to_vec(),
        )
        .await;
    let started: Value = start.json().await.unwrap();
    assert_eq!(
        keys(&started),
        keys(&fixture("upload_session_start_result.stone-example.json"))
    );
    let sid = started["session_id"].as_str().unwrap().to_owned();

    // A wrong offset: refused with where the server stands.
    let arg = json!({"cursor": {"session_id": sid, "offset": 2}}).to_string();
    let r = api
        .content("files/upload_session/append_v2", &arg, b"xx".to_vec())
        .await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e["error"],
        json!({".tag": "incorrect_offset", "correct_offset": 4})
    );

    let arg = json!({"cursor": {"session_id": sid, "offset": 4}}).to_string();
    let r = api
        .content("files/upload_session/append_v2", &arg, b"4567".to_vec())
        .await;
    assert_eq!(r.status(), 200);

    // finish's lookup errors sit under `lookup_failed`.
    let arg = json!({"cursor": {"session_id": sid, "offset": 3}, "commit": {"path": "/s.bin", "mode": "add"}}).to_string();
    let r = api
        .content("files/upload_session/finish", &arg, b"89".to_vec())
        .await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["lookup_failed"]["correct_offset"], 8);

    // A wrong content hash is refused and stores nothing.
    let arg = json!({"cursor": {"session_id": sid, "offset": 8}, "commit": {"path": "/s.bin", "mode": "add"}, "content_hash": "00"}).to_string();
    let r = api
        .content("files/upload_session/finish", &arg, b"89".to_vec())
        .await;
    assert_eq!(r.status(), 409);
    assert!(!api.emu.exists("/s.bin"));

    let arg = json!({"cursor": {"session_id": sid, "offset": 8}, "commit": {"path": "/s.bin", "mode": "add", "client_modified": "2015-05-12T15:50:38Z"}}).to_string();
    let r = api
        .content("files/upload_session/finish", &arg, b"89".to_vec())
        .await;
    assert_eq!(r.status(), 200);
    let m: Value = r.json().await.unwrap();
    assert_eq!(
        (m["size"].as_u64(), m["client_modified"].as_str()),
        (Some(10), Some("2015-05-12T15:50:38Z"))
    );
    assert_eq!(api.emu.content("/s.bin").unwrap(), b"0123456789");
    // The session is gone once finished.
    let arg = json!({"cursor": {"session_id": sid, "offset": 10}}).to_string();
    let r = api
        .content("files/upload_session/append_v2", &arg, vec![])
        .await;
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"][".tag"], "not_found");

    // Fractional seconds are refused.
    let arg = json!({"path": "/t", "mode": "add", "client_modified": "2015-05-12T15:50:38.5Z"})
        .to_string();
    assert_eq!(
        api.content("files/upload", &arg, vec![]).await.status(),
        400
    );
}

#[tokio::test]
async fn commit_modes_conflict_instead_of_overwriting() {
    let api = Api::new(DropboxConfig::default());
    let first = api.upload("/f.txt", b"one").await;
    let rev = first["rev"].as_str().unwrap();
    api.emu.add_file("/f.txt", b"someone else");
    for (mode, strict) in [
        (json!({".tag": "update", "update": rev}), true),
        (json!("add"), true),
    ] {
        let arg = json!({"path": "/f.txt", "mode": mode, "strict_conflict": strict}).to_string();
        let r = api.content("files/upload", &arg, b"mine".to_vec()).await;
        assert_eq!(r.status(), 409, "{mode}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(
            e["error"]["reason"],
            json!({".tag": "conflict", "conflict": {".tag": "file"}})
        );
    }
    assert_eq!(api.emu.content("/f.txt").unwrap(), b"someone else");
    // Without strict_conflict, identical content is no conflict.
    let arg = json!({"path": "/f.txt", "mode": "add"}).to_string();
    assert_eq!(
        api.content("files/upload", &arg, b"someone else".to_vec())
            .await
            .status(),
        200
    );
    // Moves never replace, and a change of case alone is refused (two moves are needed).
    api.upload("/g.txt", b"g").await;
    let (status, e) = api
        .rpc(
            "files/move_v2",
            json!({"from_path": "/g.txt", "to_path": "/F.TXT"}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        e["error"],
        json!({".tag": "to", "to": {".tag": "conflict", "conflict": {".tag": "file"}}})
    );
    let (status, _) = api
        .rpc(
            "files/move_v2",
            json!({"from_path": "/g.txt", "to_path": "/G.txt"}),
        )
        .await;
    assert_eq!(status, 409);
    // Deletes take a folder with everything in it; a missing path is a lookup error.
    api.upload("/d/e/x", b"x").await;
    let (status, _) = api.rpc("files/delete_v2", json!({"path": "/d"})).await;
    assert_eq!(status, 200);
    assert!(!api.emu.exists("/d/e/x"));
    let (status, e) = api.rpc("files/delete_v2", json!({"path": "/d"})).await;
    assert_eq!(status, 409);
    assert_eq!(
        e["error"],
        json!({".tag": "path_lookup", "path_lookup": {".tag": "not_found"}})
    );
}

#[tokio::test]
async fn cursors_continue_with_changes_reset_and_longpoll_waits() {
    let api = Api::new(DropboxConfig {
        longpoll_hold: Some(Duration::from_millis(400)),
        ..DropboxConfig::default()
    });
    api.upload("/a/one", b"1").await;
    let (_, c) = api
        .rpc(
            "files/list_folder/get_latest_cursor",
            json!({"path": "", "recursive": true}),
        )
        .await;
    let cursor = c["cursor"].as_str().unwrap().to_owned();
    let poll = |cursor: String, auth: bool| {
        let mut r = api
            .http
            .post(format!(
                "{}/files/list_folder/longpoll",
                api.emu.notify_base()
            ))
            .header("Content-Type", "application/json")
            .body(json!({"cursor": cursor, "timeout": 30}).to_string());
        if auth {
            r = r.bearer_auth(&api.token);
        }
        reply(r)
    };
    // No Authorization on the notify host.
    assert_eq!(poll(cursor.clone(), true).await.0, 400);
    let started = Instant::now();
    let (status, quiet) = poll(cursor.clone(), false).await;
    assert_eq!((status, &quiet), (200, &json!({"changes": false})));
    assert!(started.elapsed() >= Duration::from_millis(350), "it waited");
    assert_eq!(
        keys(&fixture("list_folder_longpoll_result.stone-example.json")),
        keys(&quiet)
    );

    // A deleted folder is one `deleted` entry.
    api.emu.delete("/a");
    api.upload("/b", b"2").await;
    let (_, changed) = poll(cursor.clone(), false).await;
    assert_eq!(changed["changes"], true);
    let (_, page) = api
        .rpc("files/list_folder/continue", json!({"cursor": cursor}))
        .await;
    let tags: Vec<(String, String)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[".tag"].as_str().unwrap().into(),
                e["path_lower"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [
            ("deleted".into(), "/a".into()),
            ("file".into(), "/b".into())
        ]
    );

    api.emu.inject(Fault::LongpollBackoff(2), 1);
    let (_, b) = poll(page["cursor"].as_str().unwrap().into(), false).await;
    assert_eq!(b["backoff"], 2);
    poll(page["cursor"].as_str().unwrap().into(), false).await;
    assert_eq!(
        api.emu.stats().backoff_violations,
        1,
        "a client that did not wait is counted"
    );

    api.emu.inject(Fault::ResetCursor, 1);
    let (status, e) = api
        .rpc(
            "files/list_folder/continue",
            json!({"cursor": page["cursor"]}),
        )
        .await;
    assert_eq!((status, &e["error"]), (409, &json!({".tag": "reset"})));
}

#[tokio::test]
async fn a_team_member_sees_the_team_space_only_with_the_path_root() {
    let api = Api::new(DropboxConfig {
        team: true,
        ..DropboxConfig::default()
    });
    api.emu.add_file("/Marketing/plan.txt", b"plan");
    api.emu.add_file("/Alice Smith/notes.txt", b"notes");
    let (_, me) = api.rpc("users/get_current_account", Value::Null).await;
    // A JSON `null` argument is what a no-argument route accepts with that content type.
    let root = me["root_info"]["root_namespace_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(
        Some(root.as_str()),
        me["root_info"]["home_namespace_id"].as_str()
    );
    assert_eq!(me["root_info"][".tag"], "team");

    let (_, home) = api.rpc("files/list_folder", json!({"path": ""})).await;
    assert_eq!(home["entries"][0]["path_display"], "/notes.txt");
    let r = api
        .http
        .post(format!("{}/files/list_folder", api.emu.api_base()))
        .bearer_auth(&api.token)
        .header("Content-Type", "application/json")
        .header(
            "Dropbox-API-Path-Root",
            json!({".tag": "root", "root": root}).to_string(),
        )
        .body(json!({"path": ""}).to_string());
    let (_, team) = reply(r).await;
    let names: BTreeSet<&str> = team["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["Alice Smith", "Marketing"]));
    let r = api
        .http
        .post(format!("{}/files/list_folder", api.emu.api_base()))
        .bearer_auth(&api.token)
        .header("Content-Type", "application/json")
        .header(
            "Dropbox-API-Path-Root",
            json!({".tag": "root", "root": "1"}).to_string(),
        )
        .body(json!({"path": ""}).to_string());
    let (status, e) = reply(r).await;
    assert_eq!(
        (status, e["error"][".tag"].as_str()),
        (422, Some("invalid_root"))
    );

    let r = api
        .http
        .post(format!("{}/users/get_space_usage", api.emu.api_base()))
        .bearer_auth(&api.token);
    let (_, usage) = reply(r).await;
    assert_eq!(
        keys(&usage["allocation"]),
        keys(&fixture("space_usage_team.stone-example.json")["allocation"])
    );
}

#[tokio::test]
async fn downloads_answer_ranges_with_the_result_header_and_refuse_paper_docs() {
    let api = Api::new(DropboxConfig::default());
    api.emu.add_file("/Dir/Ünicode.txt", b"0123456789");
    api.emu.add_paper_doc("/Dir/Plan.paper");
    let arg = r#"{"path": "/dir/\u00fcnicode.txt"}"#;
    let r = api
        .http
        .post(format!("{}/files/download", api.emu.content_base()))
        .bearer_auth(&api.token)
        .header("Dropbox-API-Arg", arg)
        .header("Range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let result = r.headers()["dropbox-api-result"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(result.is_ascii() && result.contains("\\u00dc"), "{result}");
    let m: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(m["name"], "Ünicode.txt");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"2345");

    let arg = json!({"path": "/Dir/Plan.paper"}).to_string();
    let r = api
        .http
        .post(format!("{}/files/download", api.emu.content_base()))
        .bearer_auth(&api.token)
        .header("Dropbox-API-Arg", arg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"][".tag"], "unsupported_file");
    // Listed only when asked for.
    let (_, page) = api
        .rpc(
            "files/list_folder",
            json!({"path": "/Dir", "include_non_downloadable_files": false}),
        )
        .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_batch_commits_closed_sessions_each_on_its_own() {
    let api = Api::new(DropboxConfig::default());
    api.upload("/taken.txt", b"already here").await;
    let mut entries = Vec::new();
    for (i, (path, close)) in [("/a.txt", true), ("/b.txt", false), ("/taken.txt", true)]
        .into_iter()
        .enumerate()
    {
        let arg = json!({"close": close}).to_string();
        let r = api
            .content(
                "files/upload_session/start",
                &arg,
                format!("body {i}").into_bytes(),
            )
            .await;
        let s: Value = r.json().await.unwrap();
        entries.push(json!({"cursor": {"session_id": s["session_id"], "offset": 6}, "commit": {"path": path, "mode": "add", "strict_conflict": true}}));
    }
    let (status, r) = api
        .rpc(
            "files/upload_session/finish_batch_v2",
            json!({ "entries": entries }),
        )
        .await;
    assert_eq!(status, 200);
    let e = r["entries"].as_array().unwrap();
    assert_eq!(e[0][".tag"], "success");
    assert_eq!(e[0]["name"], "a.txt");
    assert_eq!(
        e[1]["failure"],
        json!({".tag": "lookup_failed", "lookup_failed": {".tag": "not_closed"}})
    );
    // finish's WriteError sits under `path` (files/upload's under `reason`).
    assert_eq!(e[2]["failure"]["path"]["conflict"][".tag"], "file");
    assert_eq!(api.emu.content("/a.txt").unwrap(), b"body 0");
    assert!(!api.emu.exists("/b.txt"));
    assert_eq!(api.emu.content("/taken.txt").unwrap(), b"already here");
}

#[tokio::test]
async fn a_busy_namespace_refuses_commits_beyond_its_rate() {
    let api = Api::new(DropboxConfig {
        write_limit: Some((3, Duration::from_secs(60))),
        ..DropboxConfig::default()
    });
    let mut refused = 0;
    for i in 0..5 {
        let arg = json!({"path": format!("/f{i}"), "mode": "add"}).to_string();
        let r = api.content("files/upload", &arg, b"x".to_vec()).await;
        if r.status() == 429 {
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["reason"][".tag"], "too_many_write_operations");
            refused += 1;
        }
    }
    assert_eq!(refused, 2);
    assert_eq!(api.emu.stats().write_limited, 2);
}

/// A refresh token only for `token_access_type=offline`: without it Dropbox hands out a
/// short-lived token and no way to renew it, which is why the client asks for offline.
#[tokio::test]
async fn a_refresh_token_only_for_offline_access() {
    use cloudmount::accounts::{login_loopback, LoginOptions, OAuthClientConfig};
    let emu = DropboxEmulator::start(DropboxConfig::default());
    let c = emu.config();
    let mut cfg = OAuthClientConfig::dropbox(c.client_id, Some(c.client_secret));
    cfg.auth_url = emu.auth_url();
    cfg.token_url = emu.token_url();
    cfg.redirect_port = None;
    let browser = |url: String| async move {
        assert!(reqwest::get(url).await.unwrap().status().is_success());
    };
    let offline = login_loopback(&cfg, &LoginOptions::default(), browser)
        .await
        .unwrap();
    assert!(offline.refresh_token.is_some());
    cfg.extra_auth_params.clear();
    let online = login_loopback(&cfg, &LoginOptions::default(), browser)
        .await
        .unwrap();
    assert!(online.access_token.is_some());
    assert!(online.refresh_token.is_none());
}
