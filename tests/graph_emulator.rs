//! The Graph emulator held to the reference (`shared/reference/provider-apis.md` §2,
//! `readonly-sources.md` §4) and to Microsoft's published example replies, kept in
//! `tests/fixtures/onedrive/` (see its SOURCES.md):
//! each test speaks plain HTTP to it and checks one documented behaviour, so that the
//! OneDrive provider is later tested against something that behaves like Graph.

#[path = "support/emu/mod.rs"]
mod emu;
#[path = "support/graph_emulator.rs"]
mod graph_emulator;

use std::collections::BTreeSet;

use graph_emulator::{Fault, Flavour, GraphConfig, GraphEmulator, FRAGMENT_UNIT};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/onedrive/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Api {
    emu: GraphEmulator,
    http: reqwest::Client,
    token: String,
}

impl Api {
    fn new(flavour: Flavour) -> Api {
        let emu = GraphEmulator::start(GraphConfig {
            flavour,
            ..GraphConfig::default()
        });
        let (token, _) = emu.issue_tokens();
        Api {
            emu,
            http: client(),
            token,
        }
    }
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emu.api_base())
    }
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.token)
    }
    fn send(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }
}

async fn json(r: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn tokens_expire_and_the_error_says_so() {
    let api = Api::new(Flavour::Business);
    let (status, _) = json(api.get("/me/drive")).await;
    assert_eq!(status, 200);
    let (status, body) = json(api.http.get(api.url("/me/drive"))).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(body["error"]["message"], "Access token is empty.");
    api.emu.expire_all_access_tokens();
    let (status, body) = json(api.get("/me/drive")).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_used_one_is_refused() {
    let api = Api::new(Flavour::Personal);
    let (_, refresh) = api.emu.issue_tokens();
    let token_url = format!("{}/token", api.emu.authority("consumers"));
    let form = |rt: &str| {
        vec![
            ("client_id", api.emu.config().client_id),
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", rt.to_owned()),
        ]
    };
    let (status, body) = json(api.http.post(&token_url).form(&form(&refresh))).await;
    assert_eq!(status, 200, "{body}");
    let fixture = fixture("token_response.docs.json");
    for k in [
        "access_token",
        "token_type",
        "expires_in",
        "scope",
        "refresh_token",
    ] {
        assert!(body.get(k).is_some() && fixture.get(k).is_some(), "{k}");
    }
    let rotated = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, refresh);
    assert!(!api.emu.refresh_token_valid(&refresh));
    let (status, body) = json(api.http.post(&token_url).form(&form(&refresh))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS"));
    assert!(body["error_codes"].is_array());
    let (status, _) = json(api.http.post(&token_url).form(&form(&rotated))).await;
    assert_eq!(status, 200);
    // An unknown tenant is refused before anything else.
    let bad = format!("{}/token", api.emu.authority("no-such-tenant"));
    let (status, _) = json(api.http.post(&bad).form(&form(&rotated))).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_device_flow_is_pending_then_slow_down_then_granted() {
    let api = Api::new(Flavour::Business);
    let base = api.emu.authority("organizations");
    let cid = api.emu.config().client_id;
    let (status, dc) = json(api.http.post(format!("{base}/devicecode")).form(&[
        ("client_id", cid.as_str()),
        ("scope", "Files.ReadWrite offline_access"),
    ]))
    .await;
    assert_eq!(status, 200, "{dc}");
    assert!(dc["verification_uri"].is_string() && dc["user_code"].is_string());
    let poll = || {
        api.http.post(format!("{base}/token")).form(&[
            ("client_id", cid.clone()),
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:device_code".to_owned(),
            ),
            (
                "device_code",
                dc["device_code"].as_str().unwrap().to_owned(),
            ),
        ])
    };
    let (status, body) = json(poll()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending"))
    );
    // Again at once: faster than the announced interval.
    let (status, body) = json(poll()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("slow_down")));
    api.emu.approve_device(dc["user_code"].as_str().unwrap());
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let (status, body) = json(poll()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].is_string());
}

#[tokio::test]
async fn downloads_redirect_to_a_link_that_refuses_authorization_and_expires() {
    let api = Api::new(Flavour::Business);
    let (_, root) = api.emu.my_drive();
    let content: Vec<u8> = (0..2048u32).map(|i| i as u8).collect();
    let id = api.emu.add_file(&root, "a.bin", &content);
    let resp = api
        .get(&format!("/me/drive/items/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let link = resp.headers()["location"].to_str().unwrap().to_owned();
    // With the bearer token the download host refuses.
    let r = api
        .http
        .get(&link)
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Without it, a ranged read as in download_302_and_range.docs.http.
    let r = api
        .http
        .get(&link)
        .header("Range", "bytes=0-1023")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 0-1023/2048");
    assert_eq!(r.bytes().await.unwrap(), content[..1024]);
    // Some ranged reads come back whole.
    api.emu.set_ignore_range_every(Some(1));
    let r = api
        .http
        .get(&link)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), content);
    api.emu.expire_download_links();
    let r = api.http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // The item carries a download link and the quickXorHash of its content.
    let (_, item) = json(api.get(&format!("/me/drive/items/{id}"))).await;
    assert!(item["@microsoft.graph.downloadUrl"].is_string());
    assert_eq!(
        item["file"]["hashes"]["quickXorHash"],
        cloudmount::provider::onedrive::quickxor::quick_xor_base64(&content)
    );
    assert!(
        item["file"]["hashes"].get("sha1Hash").is_none(),
        "Business: quickXorHash only"
    );
}

#[tokio::test]
async fn upload_sessions_keep_graphs_rules() {
    let api = Api::new(Flavour::Business);
    let (_, root) = api.emu.my_drive();
    let (status, session) = json(
        api.send(
            reqwest::Method::POST,
            &format!("/me/drive/items/{root}:/big.bin:/createUploadSession"),
        )
        .json(&serde_json::json!({"item": {"@microsoft.graph.conflictBehavior": "fail"}})),
    )
    .await;
    assert_eq!(status, 200, "{session}");
    assert!(keys(&fixture("upload_session_create.docs.json")).is_subset(&keys(&session)));
    let url = session["uploadUrl"].as_str().unwrap().to_owned();
    let total = 4 * FRAGMENT_UNIT + 100;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let put = |a: usize, b: usize| {
        api.http
            .put(&url)
            .header("Content-Range", format!("bytes {a}-{}/{total}", b - 1))
            .body(data[a..b].to_vec())
    };
    // A fragment that is not a multiple of 320 KiB (and not the last) is refused.
    let (status, _) = json(put(0, 1000)).await;
    assert_eq!(status, 400);
    // The bearer token must not go to the upload URL.
    let (status, _) = json(put(0, FRAGMENT_UNIT).bearer_auth(&api.token)).await;
    assert_eq!(status, 401);
    let (status, body) = json(put(0, FRAGMENT_UNIT)).await;
    assert_eq!(status, 202);
    assert_eq!(
        keys(&body),
        keys(&fixture("upload_session_fragment_202.docs.json"))
    );
    assert_eq!(body["nextExpectedRanges"][0], format!("{FRAGMENT_UNIT}-"));
    // Overlap: 416 with the documented codes (the old doc spells `innererror`).
    let (status, body) = json(put(0, FRAGMENT_UNIT)).await;
    let want = fixture("error_fragment_overlap_416.docs.json");
    assert_eq!(status, 416);
    assert_eq!(body["error"]["code"], want["error"]["code"]);
    assert_eq!(
        body["error"]["innerError"]["code"],
        want["error"]["innererror"]["code"]
    );
    // Out of order.
    let (status, _) = json(put(2 * FRAGMENT_UNIT, 3 * FRAGMENT_UNIT)).await;
    assert_eq!(status, 416);
    // A connection lost mid-fragment: what arrived is kept, the status says where to go on.
    api.emu.inject(Fault::DropFragmentAfter(1000), 1);
    assert!(put(FRAGMENT_UNIT, 2 * FRAGMENT_UNIT).send().await.is_err());
    let (status, body) = json(api.http.get(&url)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["nextExpectedRanges"][0],
        format!("{}-", FRAGMENT_UNIT + 1000)
    );
    // Resume exactly there: the next fragment then ends on a 320 KiB boundary again.
    let resume = FRAGMENT_UNIT + 1000;
    let r = api
        .http
        .put(&url)
        .header(
            "Content-Range",
            format!("bytes {resume}-{}/{total}", 3 * FRAGMENT_UNIT - 1),
        )
        .body(data[resume..3 * FRAGMENT_UNIT].to_vec());
    let (status, _) = json(r).await;
    assert_eq!(status, 400, "not a multiple of 320 KiB");
    let r = api
        .http
        .put(&url)
        .header(
            "Content-Range",
            format!("bytes {resume}-{}/{total}", resume + 2 * FRAGMENT_UNIT - 1),
        )
        .body(data[resume..resume + 2 * FRAGMENT_UNIT].to_vec());
    let (status, _) = json(r).await;
    assert_eq!(status, 202);
    let (status, item) = json(put(resume + 2 * FRAGMENT_UNIT, total)).await;
    assert_eq!(status, 201, "{item}");
    assert!(keys(&fixture("upload_session_complete_201.docs.json")).is_subset(&keys(&item)));
    assert_eq!(api.emu.tree(&root)["big.bin"].as_deref(), Some(&data[..]));
    assert_eq!(api.emu.open_upload_sessions(), 0);
    // The session is gone once complete.
    let (status, _) = json(api.http.get(&url)).await;
    assert_eq!(status, 404);
    // A second session for the same name with "fail" conflicts at commit.
    let (_, s2) = json(
        api.send(
            reqwest::Method::POST,
            &format!("/me/drive/items/{root}:/big.bin:/createUploadSession"),
        )
        .json(&serde_json::json!({"item": {"@microsoft.graph.conflictBehavior": "fail"}})),
    )
    .await;
    let url2 = s2["uploadUrl"].as_str().unwrap();
    let (status, body) = json(
        api.http
            .put(url2)
            .header("Content-Range", "bytes 0-2/3")
            .body("abc"),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(
        body["error"]["code"],
        fixture("upload_name_conflict_409.docs.json")["error"]["code"]
    );
    // Expired sessions answer 404.
    let (_, s3) = json(api.send(
        reqwest::Method::POST,
        &format!("/me/drive/items/{root}:/other.bin:/createUploadSession"),
    ))
    .await;
    api.emu.expire_upload_sessions();
    let (status, _) = json(api.http.get(s3["uploadUrl"].as_str().unwrap())).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn listings_page_with_opaque_links_select_and_refuse_what_onedrive_refuses() {
    let api = Api::new(Flavour::Business);
    let (drive, root) = api.emu.my_drive();
    for n in ["b.txt", "A.txt", "c.txt", "d.txt", "e.txt"] {
        api.emu.add_file(&root, n, n.as_bytes());
    }
    let (status, page) = json(api.get(&format!(
        "/drives/{drive}/items/{root}/children?$top=2&$select=id,name,size"
    )))
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["value"].as_array().unwrap().len(), 2);
    assert_eq!(
        keys(&page["value"][0]),
        ["id", "name", "size"].map(String::from).into()
    );
    let mut names: Vec<String> = Vec::new();
    let mut page = page;
    loop {
        names.extend(
            page["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_owned()),
        );
        let Some(next) = page["@odata.nextLink"].as_str() else {
            break;
        };
        let (status, p) = json(api.http.get(next).bearer_auth(&api.token)).await;
        assert_eq!(status, 200);
        page = p;
    }
    assert_eq!(names, ["A.txt", "b.txt", "c.txt", "d.txt", "e.txt"]);
    // A made-up skip token is not a listing position.
    let (status, _) = json(api.get(&format!(
        "/drives/{drive}/items/{root}/children?$skiptoken=2"
    )))
    .await;
    assert_eq!(status, 400);
    let (status, _) = json(api.get(&format!(
        "/drives/{drive}/items/{root}/children?$select=nope"
    )))
    .await;
    assert_eq!(status, 400);
    let (status, _) =
        json(api.get(&format!("/drives/{drive}/items/{root}/children?$top=5000"))).await;
    assert_eq!(status, 400);
    // Case-insensitive names; forbidden characters, trailing dots, reserved names.
    let mkdir = |name: &str| {
        api.send(reqwest::Method::POST, &format!("/me/drive/items/{root}/children"))
            .json(&serde_json::json!({"name": name, "folder": {}, "@microsoft.graph.conflictBehavior": "fail"}))
    };
    assert_eq!(json(mkdir("a.TXT")).await.0, 409);
    for bad in [
        "a:b",
        "x?",
        "trail.",
        " lead",
        "CON",
        "desktop.ini",
        "~$lock.docx",
    ] {
        assert_eq!(json(mkdir(bad)).await.0, 400, "{bad:?}");
    }
    let (status, folder) = json(mkdir("Docs")).await;
    assert_eq!(status, 201);
    assert_eq!(folder["folder"]["childCount"], 0);
    // Path addressing, and its 404.
    let (status, item) = json(api.get("/me/drive/root:/Docs")).await;
    assert_eq!((status, item["id"].clone()), (200, folder["id"].clone()));
    assert_eq!(json(api.get("/me/drive/root:/Nope/x")).await.0, 404);
}

#[tokio::test]
async fn if_match_moves_and_conflicts() {
    let api = Api::new(Flavour::Business);
    let (_, root) = api.emu.my_drive();
    let id = api.emu.add_file(&root, "doc.txt", b"v1");
    let dir = api.emu.add_folder(&root, "dir");
    let etag = api.emu.item(&id).unwrap().etag();
    let put = |tag: &str| {
        api.send(
            reqwest::Method::PUT,
            &format!("/me/drive/items/{id}/content"),
        )
        .header("If-Match", tag)
        .body("v2")
    };
    let (status, item) = json(put(&etag)).await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(
        json(put(&etag)).await.0,
        412,
        "the old eTag no longer matches"
    );
    let (status, moved) = json(
        api.send(reqwest::Method::PATCH, &format!("/me/drive/items/{id}"))
            .json(&serde_json::json!({"name": "renamed.txt", "parentReference": {"id": dir}})),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["parentReference"]["path"], "/drive/root:/dir");
    let (status, _) = json(
        api.send(reqwest::Method::PATCH, &format!("/me/drive/items/{dir}"))
            .json(&serde_json::json!({"parentReference": {"id": dir}})),
    )
    .await;
    assert_eq!(status, 400, "a folder into itself");
    // Simple uploads stop at 4 MiB.
    let big = vec![0u8; graph_emulator::SIMPLE_UPLOAD_LIMIT + 1];
    let (status, _) = json(
        api.send(
            reqwest::Method::PUT,
            &format!("/me/drive/items/{root}:/big.bin:/content"),
        )
        .body(big),
    )
    .await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn delta_gives_latest_states_by_id_and_resyncs_on_410() {
    let api = Api::new(Flavour::Business);
    let (drive, root) = api.emu.my_drive();
    let dir = api.emu.add_folder(&root, "dir");
    let inner = api.emu.add_file(&dir, "inner.txt", b"x");
    let (status, first) = json(api.get(&format!("/drives/{drive}/root/delta?token=latest"))).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&first), keys(&fixture("delta_token_latest.docs.json")));
    let link = first["@odata.deltaLink"].as_str().unwrap().to_owned();
    // Changes: a file edited twice, a folder renamed, a file deleted.
    let f = api.emu.add_file(&root, "f.txt", b"1");
    api.emu.set_content(&f, b"22");
    api.emu.rename(&dir, "dir2");
    api.emu.delete(&inner);
    api.emu.set_repeat_in_delta(true);
    let (status, page) = json(api.http.get(&link).bearer_auth(&api.token)).await;
    assert_eq!(status, 200, "{page}");
    let values = page["value"].as_array().unwrap();
    let ids: Vec<&str> = values.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [&f, &f, &dir, &dir, &inner, &inner],
        "latest state, each repeated"
    );
    for v in values {
        assert!(
            v["parentReference"].get("path").is_none(),
            "no path in delta: {v}"
        );
        assert!(v.get("cTag").is_none(), "no cTag on Business: {v}");
    }
    assert_eq!(values[0]["size"], 2);
    let deleted = &values[4];
    assert!(
        deleted["deleted"].is_object() && deleted.get("name").is_none(),
        "{deleted}"
    );
    assert!(page["@odata.deltaLink"].is_string());
    // 410 with a Location that restarts the enumeration.
    api.emu.inject(Fault::ResyncDelta, 1);
    let resp = api
        .http
        .get(&link)
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 410);
    let restart = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "resyncRequired");
    let (status, full) = json(api.http.get(&restart).bearer_auth(&api.token)).await;
    assert_eq!(status, 200);
    assert!(full["value"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["root"].is_object()));
}

#[tokio::test]
async fn copy_is_asynchronous_versions_restore_and_quota() {
    let api = Api::new(Flavour::Business);
    let (_, root) = api.emu.my_drive();
    let id = api.emu.add_file(&root, "plan.txt", b"one");
    api.emu.set_content(&id, b"two!");
    let resp = api
        .send(reqwest::Method::POST, &format!("/me/drive/items/{id}/copy"))
        .json(&serde_json::json!({"parentReference": {"id": root}, "name": "plan (copy).txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let monitor = resp.headers()["location"].to_str().unwrap().to_owned();
    let (_, m1) = json(api.http.get(&monitor)).await;
    assert_eq!(m1["status"], "inProgress");
    let (_, m2) = json(api.http.get(&monitor)).await;
    assert_eq!(m2["status"], "completed");
    assert_eq!(
        api.emu.tree(&root)["plan (copy).txt"].as_deref(),
        Some(&b"two!"[..])
    );
    let (_, versions) = json(api.get(&format!("/me/drive/items/{id}/versions"))).await;
    let list = versions["value"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[0]["id"].as_str(), list[0]["size"].as_u64()),
        (Some("2.0"), Some(4))
    );
    assert_eq!(
        keys(&list[1]),
        keys(&fixture("versions_list.docs.json")["value"][0])
    );
    let (status, _) = json(api.send(
        reqwest::Method::POST,
        &format!("/me/drive/items/{id}/versions/1.0/restoreVersion"),
    ))
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        api.emu.tree(&root)["plan.txt"].as_deref(),
        Some(&b"one"[..])
    );
    let (_, drive) = json(api.get("/me/drive")).await;
    assert!(
        keys(&drive["quota"]).is_superset(&keys(&fixture("drive_get_quota.docs.json")["quota"]))
    );
    assert_eq!(drive["quota"]["state"], "normal");
}

#[tokio::test]
async fn throttling_with_and_without_retry_after() {
    let api = Api::new(Flavour::Personal);
    api.emu.inject(
        Fault::Throttle {
            status: 429,
            retry_after: Some(120),
        },
        1,
    );
    api.emu.inject(
        Fault::Throttle {
            status: 503,
            retry_after: None,
        },
        1,
    );
    let resp = api.get("/me/drive").send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "120");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "activityLimitReached");
    assert_eq!(body["error"]["innerError"]["code"], "throttledRequest");
    let resp = api.get("/me/drive").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_none());
    assert_eq!(api.get("/me/drive").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn sharepoint_sites_list_their_libraries() {
    let api = Api::new(Flavour::Business);
    let drives = api.emu.add_site("Marketing", &["Documents", "Assets"]);
    let (_, sites) = json(api.get("/me/followedSites")).await;
    let site = &sites["value"][0];
    assert_eq!(site["displayName"], "Marketing");
    let (status, libs) =
        json(api.get(&format!("/sites/{}/drives", site["id"].as_str().unwrap()))).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = libs["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, drives.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(libs["value"][0]["driveType"], "documentLibrary");
    // Each library is its own drive, with its own root.
    let (status, root) = json(api.get(&format!("/drives/{}/root", drives[1]))).await;
    assert_eq!(status, 200);
    assert!(root["root"].is_object());
}
