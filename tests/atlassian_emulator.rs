//! The Atlassian Cloud emulator held to the reference (`shared/reference/readonly-sources.md`
//! §2–3, `provider-apis.md` §6–7, the Confluence v2 and Jira v3 specs, replies quoted from real
//! sites — see the emulator's comments): each test speaks plain HTTP to it and checks one
//! documented behaviour, so that the Confluence and Jira providers are later tested against
//! something that behaves like Atlassian Cloud.

#[path = "support/atlassian_emulator.rs"]
mod atlassian_emulator;
#[path = "support/emu/mod.rs"]
mod emu;

use std::collections::BTreeSet;
use std::time::Duration;

use atlassian_emulator::{AtlassianConfig, AtlassianEmulator, Fault};
use base64::Engine;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Api {
    emu: AtlassianEmulator,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

const SCOPES: &str = "read:space:confluence read:page:confluence read:hierarchical-content:confluence read:folder:confluence read:attachment:confluence read:embed:confluence read:whiteboard:confluence read:jira-work offline_access";

impl Api {
    fn new() -> Api {
        Api::with(AtlassianConfig::default())
    }
    fn with(cfg: AtlassianConfig) -> Api {
        Api {
            emu: AtlassianEmulator::start(cfg),
            http: client(),
        }
    }
    /// `path` on the site, with Basic email:api_token.
    fn site(&self, path: &str) -> reqwest::RequestBuilder {
        let c = self.emu.config();
        self.http
            .get(format!("{}{path}", self.emu.site_url()))
            .basic_auth(&c.email, Some(&c.api_token))
    }
    /// `path` ("/wiki/…" or "/rest/…") on the gateway for its product.
    fn gateway_url(&self, path: &str) -> String {
        let product = if path.starts_with("/wiki") {
            "confluence"
        } else {
            "jira"
        };
        format!(
            "{}/ex/{product}/{}{path}",
            self.emu.gateway_url(),
            self.emu.cloud_id()
        )
    }
    async fn send(&self, r: reqwest::RequestBuilder) -> Reply {
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap().to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }
    async fn get(&self, path: &str) -> Reply {
        self.send(self.site(path)).await
    }
}

fn doc(text: &str) -> Value {
    json!({"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": text, "marks": [{"type": "strong"}]}]}
    ]})
}

fn ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn bare_space(api: &Api) -> String {
    api.emu.add_space("ENG", "Engineering")
}

// --- auth -------------------------------------------------------------------------------

#[tokio::test]
async fn site_takes_basic_api_tokens_only() {
    let api = Api::new();
    bare_space(&api);
    let ok = api.get("/wiki/api/v2/spaces").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["results"][0]["key"], "ENG");

    let c = api.emu.config();
    let url = format!("{}/wiki/api/v2/spaces", api.emu.site_url());
    let wrong = api
        .send(
            api.http
                .get(&url)
                .basic_auth(&c.email, Some("not-the-token")),
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong
        .text()
        .starts_with("Basic authentication with passwords is deprecated."));
    let none = api.send(api.http.get(&url)).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["errors"][0]["status"], 401);
    let (access, _) = api.emu.issue_tokens(SCOPES);
    let bearer = api.send(api.http.get(&url).bearer_auth(&access)).await;
    assert_eq!(bearer.status, 403);
    assert_eq!(
        bearer.json()["error"],
        "Failed to parse Connect Session Auth Token"
    );

    let jira = format!("{}/rest/api/3/myself", api.emu.site_url());
    let wrong = api
        .send(api.http.get(&jira).basic_auth(&c.email, Some("nope")))
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.text(),
        "Client must be authenticated to access this resource."
    );
    assert!(wrong
        .header("www-authenticate")
        .unwrap()
        .starts_with("OAuth realm="));
    let me = api.get("/rest/api/3/myself").await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["emailAddress"], c.email);
}

#[tokio::test]
async fn gateway_takes_bearer_tokens_with_scopes_and_basic_scoped_tokens() {
    let api = Api::new();
    bare_space(&api);
    let url = api.gateway_url("/wiki/api/v2/spaces");
    let c = api.emu.config().clone();
    let basic = api
        .send(api.http.get(&url).basic_auth(&c.email, Some(&c.api_token)))
        .await;
    assert_eq!(basic.status, 200);

    let (access, _) = api.emu.issue_tokens(SCOPES);
    let ok = api.send(api.http.get(&url).bearer_auth(&access)).await;
    assert_eq!(ok.status, 200);
    // Links stay the site's: base is the site's /wiki, even here.
    assert_eq!(
        ok.json()["_links"]["base"],
        format!("{}/wiki", api.emu.site_url())
    );

    let (narrow, _) = api.emu.issue_tokens("read:jira-work");
    let r = api.send(api.http.get(&url).bearer_auth(&narrow)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Unauthorized; scope does not match");

    let wrong_cloud = format!(
        "{}/ex/confluence/0000/wiki/api/v2/spaces",
        api.emu.gateway_url()
    );
    let r = api
        .send(api.http.get(&wrong_cloud).bearer_auth(&access))
        .await;
    assert_eq!(r.status, 404);

    api.emu.expire_all_access_tokens();
    let r = api.send(api.http.get(&url).bearer_auth(&access)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"code": 401, "message": "Unauthorized"}));
}

#[tokio::test]
async fn oauth_code_flow_rotates_refresh_tokens_and_lists_the_site() {
    let api = Api::new();
    let c = api.emu.config().clone();
    let redirect = "http://127.0.0.1:9/callback";
    let authorize = |audience: Option<&str>| {
        let mut q = vec![
            ("client_id", c.client_id.as_str()),
            ("scope", SCOPES),
            ("redirect_uri", redirect),
            ("state", "xyz"),
            ("response_type", "code"),
            ("prompt", "consent"),
        ];
        if let Some(a) = audience {
            q.push(("audience", a));
        }
        api.http.get(api.emu.auth_url()).query(&q)
    };
    assert_eq!(api.send(authorize(None)).await.status, 400);
    // No PKCE: Atlassian does not require it.
    let r = api.send(authorize(Some("api.atlassian.com"))).await;
    assert_eq!(r.status, 302);
    let location = url::Url::parse(&r.header("location").unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    // The token request as Atlassian's docs send it: JSON.
    let t = api
        .send(api.http.post(api.emu.token_url()).json(&json!({
            "grant_type": "authorization_code",
            "client_id": c.client_id,
            "client_secret": c.client_secret,
            "code": code,
            "redirect_uri": redirect,
        })))
        .await;
    assert_eq!(t.status, 200, "{}", t.text());
    let t = t.json();
    let access = t["access_token"].as_str().unwrap().to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();

    let res = api
        .send(
            api.http
                .get(format!(
                    "{}/oauth/token/accessible-resources",
                    api.emu.gateway_url()
                ))
                .bearer_auth(&access),
        )
        .await;
    assert_eq!(res.status, 200);
    let site = &res.json()[0];
    assert_eq!(site["id"], api.emu.cloud_id());
    assert_eq!(site["url"], api.emu.site_url());
    assert!(site["scopes"]
        .as_array()
        .unwrap()
        .contains(&json!("read:page:confluence")));

    // Refresh (a form this time): needs the secret, rotates, and the old token dies.
    let form = |rt: &str, secret: bool| {
        let mut f = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("client_id", c.client_id.clone()),
            ("refresh_token", rt.to_owned()),
        ];
        if secret {
            f.push(("client_secret", c.client_secret.clone()));
        }
        f
    };
    let no_secret = api
        .send(
            api.http
                .post(api.emu.token_url())
                .form(&form(&refresh, false)),
        )
        .await;
    assert_eq!(no_secret.status, 401);
    let r = api
        .send(
            api.http
                .post(api.emu.token_url())
                .form(&form(&refresh, true)),
        )
        .await;
    assert_eq!(r.status, 200);
    let rotated = r.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, refresh);
    let again = api
        .send(
            api.http
                .post(api.emu.token_url())
                .form(&form(&refresh, true)),
        )
        .await;
    assert_eq!(again.status, 403);
    assert_eq!(again.json()["error"], "invalid_grant");
    let r = api
        .send(
            api.http
                .post(api.emu.token_url())
                .form(&form(&rotated, true)),
        )
        .await;
    assert_eq!(r.status, 200);
    let fresh = r.json()["access_token"].as_str().unwrap().to_owned();
    let spaces = api
        .send(
            api.http
                .get(api.gateway_url("/wiki/api/v2/spaces"))
                .bearer_auth(&fresh),
        )
        .await;
    assert_eq!(spaces.status, 200);

    // With PKCE (S256) the verifier must match.
    let verifier = "v".repeat(50);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    let r = api
        .send(api.http.get(api.emu.auth_url()).query(&[
            ("audience", "api.atlassian.com"),
            ("client_id", c.client_id.as_str()),
            ("scope", SCOPES),
            ("redirect_uri", redirect),
            ("response_type", "code"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]))
        .await;
    let location = url::Url::parse(&r.header("location").unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let exchange = |code: &str, verifier: &str| {
        api.http.post(api.emu.token_url()).json(&json!({
            "grant_type": "authorization_code", "client_id": c.client_id,
            "client_secret": c.client_secret, "code": code, "redirect_uri": redirect,
            "code_verifier": verifier,
        }))
    };
    assert_eq!(api.send(exchange(&code, &"w".repeat(50))).await.status, 400);
    // Codes are single use: the failed exchange spent it.
    assert_eq!(api.send(exchange(&code, &verifier)).await.status, 400);

    // Without offline_access there is no refresh token.
    let r = api
        .send(api.http.get(api.emu.auth_url()).query(&[
            ("audience", "api.atlassian.com"),
            ("client_id", c.client_id.as_str()),
            ("scope", "read:jira-work"),
            ("redirect_uri", redirect),
            ("response_type", "code"),
        ]))
        .await;
    let location = url::Url::parse(&r.header("location").unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let t = api
        .send(api.http.post(api.emu.token_url()).json(&json!({
            "grant_type": "authorization_code", "client_id": c.client_id,
            "client_secret": c.client_secret, "code": code, "redirect_uri": redirect,
        })))
        .await;
    assert_eq!(t.status, 200);
    assert!(t.json().get("refresh_token").is_none());
}

// --- Confluence -------------------------------------------------------------------------

#[tokio::test]
async fn paging_follows_the_link_header_until_it_ends() {
    let api = Api::new();
    let space = bare_space(&api);
    let mut made = BTreeSet::new();
    for i in 0..7 {
        made.insert(
            api.emu
                .add_page(&space, None, &format!("Page {i}"), doc("x")),
        );
    }
    made.insert(api.emu.homepage_id(&space).unwrap());
    let mut seen = Vec::new();
    let mut next = Some(format!(
        "/wiki/api/v2/spaces/{space}/pages?limit=3&sort=-modified-date"
    ));
    let mut rounds = 0;
    while let Some(path) = next.take() {
        rounds += 1;
        let r = api.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert!(body["results"].as_array().unwrap().len() <= 3);
        seen.extend(ids(&body));
        assert_eq!(
            body["_links"]["base"],
            format!("{}/wiki", api.emu.site_url())
        );
        let link = r.header("link").unwrap();
        match body["_links"]["next"].as_str() {
            Some(n) => {
                assert!(n.starts_with(&format!("/wiki/api/v2/spaces/{space}/pages?cursor=")));
                assert!(link.starts_with(&format!("<{n}>; rel=\"next\"")), "{link}");
                next = Some(n.to_owned());
            }
            None => assert!(!link.contains("rel=\"next\"")),
        }
        assert!(link.ends_with("; rel=\"base\""));
    }
    assert_eq!(rounds, 3);
    assert_eq!(seen.len(), 8);
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), made);
}

#[tokio::test]
async fn out_of_range_limits_bad_enums_and_cursors_are_400s() {
    let api = Api::new();
    let space = bare_space(&api);
    let base = format!("/wiki/api/v2/spaces/{space}/pages");
    for q in [
        "limit=0",
        "limit=251",
        "limit=ten",
        "sort=newest",
        "depth=some",
        "body-format=view",
        "status=gone",
        "cursor=not-a-cursor",
    ] {
        let r = api.get(&format!("{base}?{q}")).await;
        assert_eq!(r.status, 400, "{q}");
        let e = &r.json()["errors"][0];
        assert_eq!(e["status"], 400, "{q}");
        assert_eq!(e["code"], "INVALID_REQUEST_PARAMETER", "{q}");
        assert!(e["title"].is_string() && e.get("detail").is_some(), "{q}");
    }
    // Unknown parameters are ignored; the maximum is fine.
    let r = api.get(&format!("{base}?limit=250&whatever=1")).await;
    assert_eq!(r.status, 200);
    let r = api.get("/wiki/api/v2/pages/99999999").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"errors": [{"status": 404, "code": "NOT_FOUND", "title": "Not Found", "detail": null}]})
    );
}

#[tokio::test]
async fn bodies_come_as_an_adf_json_string_or_storage() {
    let api = Api::new();
    let space = bare_space(&api);
    let adf = doc("Hello <world>");
    let page = api.emu.add_page(&space, None, "Greeting", adf.clone());
    let r = api
        .get(&format!(
            "/wiki/api/v2/spaces/{space}/pages?body-format=atlas_doc_format"
        ))
        .await;
    let body = r.json();
    let p = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == page.as_str())
        .unwrap()
        .clone();
    let value = p["body"]["atlas_doc_format"]["value"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(value).unwrap(), adf);
    assert_eq!(
        p["body"]["atlas_doc_format"]["representation"],
        "atlas_doc_format"
    );
    for k in [
        "id",
        "status",
        "title",
        "spaceId",
        "parentId",
        "parentType",
        "position",
        "authorId",
        "ownerId",
        "createdAt",
        "version",
        "body",
        "_links",
    ] {
        assert!(p.get(k).is_some(), "{k}");
    }
    assert_eq!(p["version"]["number"], 1);
    let r = api
        .get(&format!("/wiki/api/v2/pages/{page}?body-format=storage"))
        .await;
    let storage = r.json()["body"]["storage"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(storage, "<p><strong>Hello &lt;world&gt;</strong></p>");
    // Without body-format: an empty body.
    let r = api.get(&format!("/wiki/api/v2/pages/{page}")).await;
    assert_eq!(r.json()["body"], json!({}));
}

#[tokio::test]
async fn versions_and_previous_versions() {
    let api = Api::new();
    let space = bare_space(&api);
    let page = api.emu.add_page(&space, None, "Old", doc("a"));
    let before = api.get(&format!("/wiki/api/v2/pages/{page}")).await.json();
    api.emu.advance_clock(Duration::from_secs(3600));
    api.emu.update_page(&page, Some("New"), Some(doc("b")));
    let after = api.get(&format!("/wiki/api/v2/pages/{page}")).await.json();
    assert_eq!(after["title"], "New");
    assert_eq!(after["version"]["number"], 2);
    assert!(after["version"]["createdAt"].as_str() > before["version"]["createdAt"].as_str());
    assert_eq!(after["createdAt"], before["createdAt"]);
    let v1 = api
        .get(&format!("/wiki/api/v2/pages/{page}?version=1"))
        .await
        .json();
    assert_eq!(v1["title"], "Old");
    assert_eq!(v1["version"]["number"], 1);
}

#[tokio::test]
async fn depth_root_lists_top_level_pages_only() {
    let api = Api::with(AtlassianConfig {
        space_homepages: false,
        ..AtlassianConfig::default()
    });
    let space = bare_space(&api);
    let a = api.emu.add_page(&space, None, "A", doc("a"));
    let b = api.emu.add_page(&space, Some(&a), "B", doc("b"));
    let c = api.emu.add_page(&space, Some(&b), "C", doc("c"));
    let all = api
        .get(&format!("/wiki/api/v2/spaces/{space}/pages"))
        .await
        .json();
    assert_eq!(ids(&all), vec![a.clone(), b.clone(), c]);
    assert_eq!(all["results"][0]["parentId"], Value::Null);
    assert_eq!(all["results"][1]["parentId"], a.as_str());
    assert_eq!(all["results"][1]["parentType"], "page");
    let root = api
        .get(&format!("/wiki/api/v2/spaces/{space}/pages?depth=root"))
        .await
        .json();
    assert_eq!(ids(&root), vec![a]);
}

#[tokio::test]
async fn direct_children_keep_sibling_order_and_carry_types() {
    let api = Api::new();
    let space = bare_space(&api);
    let home = api.emu.homepage_id(&space).unwrap();
    let p1 = api.emu.add_page(&space, Some(&home), "One", doc("1"));
    let folder = api.emu.add_folder(&space, Some(&home), "Folder");
    let wb = api
        .emu
        .add_content(&space, Some(&home), "whiteboard", "Board");
    let embed = api.emu.add_content(&space, Some(&home), "embed", "Link");
    let db = api
        .emu
        .add_content(&space, Some(&home), "database", "Table");
    let p2 = api.emu.add_page(&space, Some(&home), "Two", doc("2"));
    let inner = api.emu.add_page(&space, Some(&folder), "Inside", doc("i"));

    let r = api
        .get(&format!("/wiki/api/v2/pages/{home}/direct-children"))
        .await
        .json();
    let items = r["results"].as_array().unwrap();
    let types: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["page", "folder", "whiteboard", "embed", "database", "page"]
    );
    assert_eq!(
        ids(&r),
        vec![
            p1.clone(),
            folder.clone(),
            wb,
            embed.clone(),
            db,
            p2.clone()
        ]
    );
    let positions: Vec<i64> = items
        .iter()
        .map(|i| i["childPosition"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    for i in items {
        assert_eq!(i["spaceId"], space.as_str());
        assert_eq!(i["status"], "current");
    }

    // A move appends at the end of the new parent.
    api.emu.move_page(&p1, Some(&folder));
    let r = api
        .get(&format!("/wiki/api/v2/folders/{folder}/direct-children"))
        .await
        .json();
    assert_eq!(ids(&r), vec![inner, p1.clone()]);
    let moved = api.get(&format!("/wiki/api/v2/pages/{p1}")).await.json();
    assert_eq!(moved["parentId"], folder.as_str());
    assert_eq!(moved["parentType"], "folder");
    assert_eq!(moved["version"]["number"], 2);

    let f = api
        .get(&format!("/wiki/api/v2/folders/{folder}"))
        .await
        .json();
    assert_eq!(f["type"], "folder");
    assert_eq!(f["title"], "Folder");
    assert_eq!(f["parentId"], home.as_str());
    let e = api
        .get(&format!("/wiki/api/v2/embeds/{embed}"))
        .await
        .json();
    assert!(e["embedUrl"].is_string());
    // A page id on the folder route is a 404.
    assert_eq!(
        api.get(&format!("/wiki/api/v2/folders/{p2}")).await.status,
        404
    );

    // The deprecated children route: pages only.
    let r = api
        .get(&format!("/wiki/api/v2/pages/{home}/children"))
        .await
        .json();
    assert_eq!(ids(&r), vec![p2]);

    // Descendants: depth 1..5, default 2.
    let d = api
        .get(&format!("/wiki/api/v2/pages/{home}/descendants"))
        .await
        .json();
    let depths: BTreeSet<i64> = d["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["depth"].as_i64().unwrap())
        .collect();
    assert_eq!(depths, BTreeSet::from([1, 2]));
    let d = api
        .get(&format!("/wiki/api/v2/pages/{home}/descendants?depth=1"))
        .await
        .json();
    assert_eq!(d["results"].as_array().unwrap().len(), 5);
    assert_eq!(
        api.get(&format!("/wiki/api/v2/pages/{home}/descendants?depth=6"))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn trashed_pages_only_with_status_trashed() {
    let api = Api::with(AtlassianConfig {
        space_homepages: false,
        ..AtlassianConfig::default()
    });
    let space = bare_space(&api);
    let keep = api.emu.add_page(&space, None, "Keep", doc("k"));
    let gone = api.emu.add_page(&space, None, "Gone", doc("g"));
    let child = api.emu.add_page(&space, Some(&gone), "Child", doc("c"));
    api.emu.trash_page(&gone);

    let r = api
        .get(&format!("/wiki/api/v2/pages?space-id={space}"))
        .await
        .json();
    assert_eq!(ids(&r), vec![keep.clone(), child.clone()]);
    let r = api
        .get(&format!(
            "/wiki/api/v2/pages?space-id={space}&status=trashed"
        ))
        .await
        .json();
    assert_eq!(ids(&r), vec![gone.clone()]);
    assert_eq!(r["results"][0]["status"], "trashed");
    let r = api
        .get(&format!(
            "/wiki/api/v2/spaces/{space}/pages?status=current,trashed"
        ))
        .await
        .json();
    assert_eq!(ids(&r).len(), 3);
    let p = api.get(&format!("/wiki/api/v2/pages/{gone}")).await.json();
    assert_eq!(p["status"], "trashed");
    assert_eq!(p["version"]["number"], 2);
    // Its child moved up to the trashed page's parent (the top level here).
    let c = api.get(&format!("/wiki/api/v2/pages/{child}")).await.json();
    assert_eq!(c["parentId"], Value::Null);
}

#[tokio::test]
async fn pages_the_user_may_not_see_are_404_and_unlisted() {
    let api = Api::new();
    let space = bare_space(&api);
    let home = api.emu.homepage_id(&space).unwrap();
    let secret = api.emu.add_page(&space, Some(&home), "Secret", doc("s"));
    let below = api.emu.add_page(&space, Some(&secret), "Below", doc("b"));
    api.emu.add_attachment(&secret, "a.txt", "text/plain", b"x");
    api.emu.set_page_visible(&secret, false);
    for path in [
        format!("/wiki/api/v2/pages/{secret}"),
        format!("/wiki/api/v2/pages/{below}"),
        format!("/wiki/api/v2/pages/{secret}/attachments"),
        format!("/wiki/api/v2/pages/{secret}/direct-children"),
    ] {
        assert_eq!(api.get(&path).await.status, 404, "{path}");
    }
    let all = api
        .get(&format!("/wiki/api/v2/spaces/{space}/pages"))
        .await
        .json();
    assert_eq!(ids(&all), vec![home.clone()]);
    let kids = api
        .get(&format!("/wiki/api/v2/pages/{home}/direct-children"))
        .await
        .json();
    assert!(ids(&kids).is_empty());
    api.emu.set_page_visible(&secret, true);
    assert_eq!(
        api.get(&format!("/wiki/api/v2/pages/{below}")).await.status,
        200
    );
}

#[tokio::test]
async fn attachments_list_and_download_through_the_media_host() {
    let api = Api::new();
    let space = bare_space(&api);
    let page = api.emu.add_page(&space, None, "Files", doc("f"));
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let (att, file_id) = api
        .emu
        .add_attachment(&page, "report 1.pdf", "application/pdf", &data);
    api.emu.add_attachment(&page, "b.txt", "text/plain", b"bee");
    assert!(att.starts_with("att"));

    let r = api
        .get(&format!("/wiki/api/v2/pages/{page}/attachments?limit=1"))
        .await;
    let body = r.json();
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    assert!(body["_links"]["next"].is_string());
    let a = &body["results"][0];
    assert_eq!(a["id"], att.as_str());
    assert_eq!(a["fileId"], file_id.as_str());
    assert_eq!(a["fileSize"], 1000);
    assert_eq!(a["pageId"], page.as_str());
    assert_eq!(a["mediaType"], "application/pdf");
    let link = a["downloadLink"].as_str().unwrap();
    assert!(link.starts_with(&format!(
        "/download/attachments/{page}/report%201.pdf?version=1&modificationDate="
    )));
    assert!(link.ends_with("&cacheVersion=1&api=v2"));
    assert_eq!(a["_links"]["download"], link);
    let filtered = api
        .get(&format!(
            "/wiki/api/v2/pages/{page}/attachments?filename=b.txt"
        ))
        .await
        .json();
    assert_eq!(filtered["results"][0]["title"], "b.txt");

    // The v1 REST download redirects to the media host.
    let r = api
        .get(&format!(
            "/wiki/rest/api/content/{page}/child/attachment/{att}/download"
        ))
        .await;
    assert_eq!(r.status, 302);
    let to = r.header("location").unwrap();
    assert!(to.starts_with(&format!(
        "{}/file/{file_id}/binary?token=",
        api.emu.media_url()
    )));
    assert!(to.contains("&client="));
    // The media host refuses credentials; it wants the token in the link alone.
    let c = api.emu.config().clone();
    let with_auth = api
        .send(api.http.get(&to).basic_auth(&c.email, Some(&c.api_token)))
        .await;
    assert_eq!(with_auth.status, 401);
    let whole = api.send(api.http.get(&to)).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, data);
    let part = api
        .send(api.http.get(&to).header("Range", "bytes=10-19"))
        .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &data[10..20]);
    assert_eq!(part.header("content-range").unwrap(), "bytes 10-19/1000");
    let past = api
        .send(api.http.get(&to).header("Range", "bytes=5000-"))
        .await;
    assert_eq!(past.status, 416);

    // The web servlet refuses API-token Basic auth; an OAuth bearer on the gateway works.
    let servlet = api.get(&format!("/wiki{link}")).await;
    assert_eq!(servlet.status, 401);
    assert!(servlet
        .header("www-authenticate")
        .unwrap()
        .starts_with("OAuth realm="));
    let (access, _) = api.emu.issue_tokens(SCOPES);
    let r = api
        .send(
            api.http
                .get(api.gateway_url(&format!("/wiki{link}")))
                .bearer_auth(&access),
        )
        .await;
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().contains(&file_id));
    // The REST download takes a scoped API token (Basic) on the gateway too.
    let v1 = format!("/wiki/rest/api/content/{page}/child/attachment/{att}/download");
    let r = api
        .send(
            api.http
                .get(api.gateway_url(&v1))
                .basic_auth(&c.email, Some(&c.api_token)),
        )
        .await;
    assert_eq!(r.status, 302);

    // A trashed attachment: listed only with status=trashed, not downloadable.
    api.emu.remove_attachment(&att);
    let r = api
        .get(&format!("/wiki/api/v2/pages/{page}/attachments"))
        .await
        .json();
    assert_eq!(r["results"].as_array().unwrap().len(), 1);
    let r = api
        .get(&format!(
            "/wiki/rest/api/content/{page}/child/attachment/{att}/download"
        ))
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn media_without_range_support_sends_the_whole_file() {
    let api = Api::with(AtlassianConfig {
        media_honours_range: false,
        ..AtlassianConfig::default()
    });
    let space = bare_space(&api);
    let page = api.emu.add_page(&space, None, "Files", doc("f"));
    let (att, _) =
        api.emu
            .add_attachment(&page, "a.bin", "application/octet-stream", b"0123456789");
    let r = api
        .get(&format!(
            "/wiki/rest/api/content/{page}/child/attachment/{att}/download"
        ))
        .await;
    let to = r.header("location").unwrap();
    let r = api
        .send(api.http.get(&to).header("Range", "bytes=2-4"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"0123456789");
}

// --- Jira -------------------------------------------------------------------------------

fn jira_api(max_results: usize) -> Api {
    Api::with(AtlassianConfig {
        jira_max_results: max_results,
        ..AtlassianConfig::default()
    })
}

fn jql_path(jql: &str, extra: &str) -> String {
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("jql", jql)
        .finish();
    format!("/rest/api/3/search/jql?{q}{extra}")
}

#[tokio::test]
async fn search_returns_ids_only_by_default_and_fields_on_request() {
    let api = jira_api(100);
    api.emu.add_project("PROJ", "Project");
    let (id, key) = api.emu.add_issue("PROJ", "First");
    let att = api.emu.add_jira_attachment(&id, "log.txt", b"hello");
    let r = api.get(&jql_path("project = PROJ", "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["issues"], json!([{"id": id}]));
    assert_eq!(body["isLast"], true);
    assert!(body.get("nextPageToken").is_none());
    assert!(body.get("total").is_none());

    let r = api
        .get(&jql_path(
            "project = \"PROJ\"",
            "&fields=summary,updated,attachment,project",
        ))
        .await
        .json();
    let issue = &r["issues"][0];
    assert_eq!(issue["key"], key.as_str());
    assert!(issue["self"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/rest/api/3/issue/{id}")));
    let f = &issue["fields"];
    assert_eq!(f["summary"], "First");
    assert_eq!(f["project"]["key"], "PROJ");
    let updated = f["updated"].as_str().unwrap();
    assert_eq!(updated.len(), "2026-12-01T10:15:30.123+0000".len());
    assert!(updated.ends_with("+0000"));
    let a = &f["attachment"][0];
    assert_eq!(a["id"], att.as_str());
    assert_eq!(a["filename"], "log.txt");
    assert_eq!(a["size"], 5);
    assert_eq!(
        a["content"],
        format!("{}/rest/api/3/attachment/content/{att}", api.emu.site_url())
    );
    assert!(a["author"]["accountId"].is_string());
    assert!(f.get("created").is_none());

    // POST takes the same in JSON.
    let r = api
        .send(
            api.http
                .post(format!("{}/rest/api/3/search/jql", api.emu.site_url()))
                .basic_auth(&api.emu.config().email, Some(&api.emu.config().api_token))
                .json(&json!({"jql": "project in (PROJ) AND attachments IS NOT EMPTY", "fields": ["summary"]})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["issues"][0]["fields"], json!({"summary": "First"}));
}

#[tokio::test]
async fn search_pages_with_tokens_bound_to_their_query() {
    let api = jira_api(2);
    api.emu.add_project("PROJ", "Project");
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(api.emu.add_issue("PROJ", &format!("Issue {i}")).0);
    }
    let jql = "project = PROJ ORDER BY id ASC";
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let extra = token
            .as_ref()
            .map(|t| format!("&nextPageToken={t}"))
            .unwrap_or_default();
        let r = api
            .get(&jql_path(jql, &format!("{extra}&maxResults=50")))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let b = r.json();
        let page: Vec<String> = b["issues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(page.len() <= 2);
        seen.extend(page);
        match b["nextPageToken"].as_str() {
            Some(t) => {
                assert_eq!(b["isLast"], false);
                // The token belongs to its query.
                let other = api
                    .get(&jql_path("project = PROJ", &format!("&nextPageToken={t}")))
                    .await;
                assert_eq!(other.status, 400);
                assert!(other.json()["errorMessages"][0].is_string());
                token = Some(t.to_owned());
            }
            None => {
                assert_eq!(b["isLast"], true);
                break;
            }
        }
    }
    assert_eq!(seen, made);
    assert_eq!(api.get(&jql_path(jql, "&maxResults=0")).await.status, 400);
    assert_eq!(
        api.get(&jql_path(jql, "&maxResults=5001")).await.status,
        400
    );
}

#[tokio::test]
async fn jql_errors_and_the_removed_search() {
    let api = jira_api(100);
    api.emu.add_project("PROJ", "Project");
    let r = api.get(&jql_path("ORDER BY updated DESC", "")).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"errorMessages": ["Unbounded JQL queries are not allowed here. Please add a search restriction to your query."], "errors": {}})
    );
    assert_eq!(api.get("/rest/api/3/search/jql").await.status, 400);
    let r = api.get(&jql_path("project = PROJ AND AND", "")).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["errorMessages"][0]
        .as_str()
        .unwrap()
        .starts_with("Error in the JQL Query: "));
    let r = api.get(&jql_path("project = NOPE", "")).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["errorMessages"][0],
        "The value 'NOPE' does not exist for the field 'project'."
    );
    let r = api
        .get(&jql_path(
            "project = PROJ AND updated >= \"2026.01.01\"",
            "",
        ))
        .await;
    assert_eq!(r.status, 400);

    let removed = api
        .get(&format!(
            "/rest/api/3/search?{}",
            &jql_path("project = PROJ", "")[22..]
        ))
        .await;
    assert_eq!(removed.status, 410);
    assert!(removed.json()["errorMessages"][0]
        .as_str()
        .unwrap()
        .starts_with(
            "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API."
        ));
    let c = api.emu.config().clone();
    let post = api
        .send(
            api.http
                .post(format!("{}/rest/api/3/search", api.emu.site_url()))
                .basic_auth(&c.email, Some(&c.api_token))
                .json(&json!({"jql": "project = PROJ"})),
        )
        .await;
    assert_eq!(post.status, 410);
}

#[tokio::test]
async fn updated_filters_at_minute_precision() {
    let api = jira_api(100);
    api.emu.add_project("PROJ", "Project");
    let (old, _) = api.emu.add_issue("PROJ", "Old");
    api.emu.advance_clock(Duration::from_secs(180));
    let (new, _) = api.emu.add_issue("PROJ", "New");
    let f = api
        .get(&jql_path(&format!("id = {new}"), "&fields=updated"))
        .await
        .json();
    let updated = f["issues"][0]["fields"]["updated"]
        .as_str()
        .unwrap()
        .to_owned();
    // "2026-12-01T10:15:30.123+0000" → minute "2026/12/01 10:15".
    let minute_slash = format!("{} {}", updated[..10].replace('-', "/"), &updated[11..16]);
    let minute_dash = format!("{} {}", &updated[..10], &updated[11..16]);
    for m in [minute_slash, minute_dash] {
        let r = api
            .get(&jql_path(
                &format!("project = PROJ AND updated >= \"{m}\" ORDER BY updated ASC"),
                "",
            ))
            .await
            .json();
        assert_eq!(r["issues"], json!([{"id": new}]), "{m}");
    }
    // A later change to the old issue brings it in (relative dates count from the clock).
    api.emu.advance_clock(Duration::from_secs(300));
    api.emu.set_summary(&old, "Old, edited");
    let r = api
        .get(&jql_path(
            "project = PROJ AND updated >= \"-2m\" ORDER BY updated ASC",
            "",
        ))
        .await
        .json();
    assert_eq!(r["issues"], json!([{"id": old}]));
}

#[tokio::test]
async fn a_moved_issue_keeps_its_id_and_its_old_key_resolves() {
    let api = jira_api(100);
    api.emu.add_project("OLD", "Old");
    api.emu.add_project("NEW", "New");
    let (id, key) = api.emu.add_issue("OLD", "Wanderer");
    assert_eq!(key, "OLD-1");
    let new_key = api.emu.move_issue(&id, "NEW");
    assert_eq!(new_key, "NEW-1");
    let r = api.get("/rest/api/3/issue/OLD-1?fields=summary").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], id.as_str());
    assert_eq!(r.json()["key"], "NEW-1");
    let r = api
        .get(&jql_path("key = OLD-1", "&fields=project"))
        .await
        .json();
    assert_eq!(r["issues"][0]["fields"]["project"]["key"], "NEW");
    let r = api.get(&jql_path("project = OLD", "")).await.json();
    assert_eq!(r["issues"], json!([]));
    let r = api.get("/rest/api/3/issue/OLD-99").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}})
    );
    api.emu.delete_issue(&id);
    assert_eq!(
        api.get(&format!("/rest/api/3/issue/{id}")).await.status,
        404
    );
}

#[tokio::test]
async fn projects_list_with_offsets_and_404_by_key() {
    let api = jira_api(100);
    for k in ["AAA", "BBB", "CCC"] {
        api.emu.add_project(k, &format!("Project {k}"));
    }
    let r = api
        .get("/rest/api/3/project/search?maxResults=2")
        .await
        .json();
    assert_eq!(r["total"], 3);
    assert_eq!(r["isLast"], false);
    assert_eq!(r["values"].as_array().unwrap().len(), 2);
    assert!(r["nextPage"].as_str().unwrap().contains("startAt=2"));
    let r = api
        .get("/rest/api/3/project/search?startAt=2&maxResults=2")
        .await
        .json();
    assert_eq!(r["isLast"], true);
    assert_eq!(r["values"][0]["key"], "CCC");
    let r = api.get("/rest/api/3/project/search?keys=BBB").await.json();
    assert_eq!(r["values"][0]["name"], "Project BBB");
    assert_eq!(
        api.get("/rest/api/3/project/AAA").await.json()["key"],
        "AAA"
    );
    let r = api.get("/rest/api/3/project/ZZZ").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["errorMessages"][0],
        "No project could be found with key 'ZZZ'."
    );
}

#[tokio::test]
async fn attachment_content_redirects_or_serves_ranges() {
    let api = jira_api(100);
    api.emu.add_project("PROJ", "Project");
    let (id, _) = api.emu.add_issue("PROJ", "With file");
    let data: Vec<u8> = (0..100u8).collect();
    let att = api.emu.add_jira_attachment(&id, "data.bin", &data);
    let meta = api
        .get(&format!("/rest/api/3/attachment/{att}"))
        .await
        .json();
    assert_eq!(meta["id"], att.parse::<u64>().unwrap());
    assert_eq!(meta["size"], 100);

    let r = api
        .get(&format!("/rest/api/3/attachment/content/{att}"))
        .await;
    assert_eq!(r.status, 303);
    let to = r.header("location").unwrap();
    assert!(to.starts_with(&api.emu.media_url()));
    assert_eq!(api.send(api.http.get(&to)).await.body, data);

    let path = format!("/rest/api/3/attachment/content/{att}?redirect=false");
    let whole = api.get(&path).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, data);
    let part = api.send(api.site(&path).header("Range", "bytes=90-")).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &data[90..]);
    assert_eq!(part.header("content-range").unwrap(), "bytes 90-99/100");
    let past = api
        .send(api.site(&path).header("Range", "bytes=100-200"))
        .await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range").unwrap(), "bytes */100");

    api.emu.remove_jira_attachment(&att);
    assert_eq!(api.get(&path).await.status, 404);
    let r = api
        .get(&jql_path("project = PROJ AND attachments IS EMPTY", ""))
        .await
        .json();
    assert_eq!(r["issues"], json!([{"id": id}]));
}

#[tokio::test]
async fn jira_via_the_gateway_links_back_to_the_gateway() {
    let api = jira_api(100);
    api.emu.add_project("PROJ", "Project");
    let (id, _) = api.emu.add_issue("PROJ", "x");
    let (access, _) = api.emu.issue_tokens("read:jira-work offline_access");
    let r = api
        .send(
            api.http
                .get(api.gateway_url(&jql_path("project = PROJ", "&fields=summary")))
                .bearer_auth(&access),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let expected = format!(
        "{}/ex/jira/{}/rest/api/3/issue/{id}",
        api.emu.gateway_url(),
        api.emu.cloud_id()
    );
    assert_eq!(r.json()["issues"][0]["self"], expected);
}

// --- faults -----------------------------------------------------------------------------

#[tokio::test]
async fn injected_rate_limits_and_unavailability() {
    let api = jira_api(100);
    api.emu.add_project("PROJ", "Project");
    api.emu.inject(
        Fault::RateLimited {
            retry_after_secs: 7,
            reason: Some("jira-burst-based"),
        },
        1,
    );
    let r = api.get("/rest/api/3/project/PROJ").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").unwrap(), "7");
    assert_eq!(r.header("ratelimit-reason").unwrap(), "jira-burst-based");
    let reset = r.header("x-ratelimit-reset").unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(&reset, "%Y-%m-%dT%H:%MZ").is_ok(),
        "{reset}"
    );
    assert!(r.json()["errorMessages"][0].is_string());
    assert_eq!(api.get("/rest/api/3/project/PROJ").await.status, 200);

    bare_space(&api);
    api.emu.inject(
        Fault::ServiceUnavailable {
            retry_after_secs: Some(3),
        },
        1,
    );
    let r = api.get("/wiki/api/v2/spaces").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after").unwrap(), "3");
    api.emu.inject(Fault::ServerError, 1);
    assert_eq!(api.get("/wiki/api/v2/spaces").await.status, 500);
    assert_eq!(api.get("/wiki/api/v2/spaces").await.status, 200);
}

#[tokio::test]
async fn dropped_connections_and_cut_bodies() {
    let api = Api::new();
    let space = bare_space(&api);
    for i in 0..5 {
        api.emu
            .add_page(&space, None, &format!("P{i}"), doc("some text to cut"));
    }
    api.emu.inject(Fault::Drop, 1);
    assert!(api.site("/wiki/api/v2/spaces").send().await.is_err());
    api.emu.inject(Fault::CutBody, 1);
    // The status and headers arrive, then the body ends before its Content-Length.
    let resp = api
        .site(&format!(
            "/wiki/api/v2/spaces/{space}/pages?body-format=storage"
        ))
        .send()
        .await
        .expect("the head of a cut reply arrives");
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "the body is cut");
    assert_eq!(api.emu.pending_faults(), 0);
    assert_eq!(api.get("/wiki/api/v2/spaces").await.status, 200);
}

#[tokio::test]
async fn every_request_is_logged_in_order() {
    let api = jira_api(100);
    api.emu.add_project("PROJ", "Project");
    api.get("/rest/api/3/project/PROJ").await;
    api.get("/wiki/api/v2/spaces").await;
    let log = api.emu.requests();
    let paths: Vec<&str> = log.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/rest/api/3/project/PROJ", "/wiki/api/v2/spaces"]);
    let auth = log[0].header("authorization").unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim_start_matches("Basic "))
        .unwrap();
    assert!(String::from_utf8(decoded)
        .unwrap()
        .starts_with("dev@example.com:"));
}
