//! The node over real HTTP: pages, every form action, the API, and bad input.

mod common;

use common::{TestNode, add, client, get_json, get_text, post_form, todos};
use serde_json::Value;

async fn db_version(node: &TestNode) -> i64 {
    let health: Value = get_json(node, "/health").await;
    health["db_version"].as_i64().expect("db_version")
}

#[tokio::test]
async fn page_lists_added_todos_with_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;

    let (status, html) = get_text(&node, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("Nothing to do yet."));

    add(&node, "buy milk").await;
    add(&node, "  walk the dog  ").await;
    let (status, html) = get_text(&node, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("buy milk") && html.contains("walk the dog"));
    assert!(html.contains("2 items left"));
    assert!(html.contains("(2 total, 0 completed)"));
    // Oldest first.
    assert!(html.find("buy milk") < html.find("walk the dog"));
    node.stop().await;
}

#[tokio::test]
async fn every_form_action_works_and_redirects_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    let milk = add(&node, "buy milk").await;
    let dog = add(&node, "walk the dog").await;

    // Toggle done, answered 303 to the page the form came from (filter kept).
    let r = post_form(
        &node,
        &format!("/todos/{milk}/toggle"),
        &[("completed", "1"), ("return_to", "/?filter=active")],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/?filter=active");
    let (_, active) = get_text(&node, "/?filter=active").await;
    assert!(!active.contains("buy milk") && active.contains("walk the dog"));
    let (_, completed) = get_text(&node, "/?filter=completed").await;
    assert!(completed.contains("buy milk") && !completed.contains("walk the dog"));
    // The same form submitted twice leaves it done (sets, does not flip).
    post_form(
        &node,
        &format!("/todos/{milk}/toggle"),
        &[("completed", "1")],
    )
    .await;
    let all = todos(&node).await;
    assert_eq!(all[0]["completed"], true);

    // Edit the title.
    let r = post_form(
        &node,
        &format!("/todos/{dog}/title"),
        &[("title", "walk the cat"), ("return_to", "/")],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    assert_eq!(todos(&node).await[1]["title"], "walk the cat");

    // Toggle back to not done.
    post_form(
        &node,
        &format!("/todos/{milk}/toggle"),
        &[("completed", "0")],
    )
    .await;
    assert_eq!(todos(&node).await[0]["completed"], false);

    // Clear completed removes only the completed ones.
    post_form(
        &node,
        &format!("/todos/{dog}/toggle"),
        &[("completed", "1")],
    )
    .await;
    let r = post_form(&node, "/todos/clear-completed", &[("return_to", "/")]).await;
    assert_eq!(r.status(), 303);
    let left = todos(&node).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], milk.as_str());

    // Delete.
    let r = post_form(
        &node,
        &format!("/todos/{milk}/delete"),
        &[("return_to", "/")],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert!(todos(&node).await.is_empty());
    node.stop().await;
}

#[tokio::test]
async fn redirect_target_is_never_taken_verbatim_from_the_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    for evil in [
        "https://evil.example/",
        "//evil.example",
        "/\\evil",
        "javascript:alert(1)",
    ] {
        let r = post_form(&node, "/todos", &[("title", "x"), ("return_to", evil)]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/", "return_to {evil:?}");
    }
    node.stop().await;
}

#[tokio::test]
async fn invalid_titles_get_the_page_again_with_a_message_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    let id = add(&node, "keep me").await;
    let before = (todos(&node).await, db_version(&node).await);

    for (title, message) in [
        ("", "A todo needs a title."),
        ("   \t ", "A todo needs a title."),
        (&"x".repeat(501), "at most 500 characters"),
    ] {
        let r = post_form(&node, "/todos", &[("title", title), ("return_to", "/")]).await;
        assert_eq!(r.status(), 422, "title {title:?}");
        let html = r.text().await.expect("body");
        assert!(html.contains(message), "{message} in page");
        assert!(html.contains("keep me"), "the page still shows the list");

        let r = post_form(&node, &format!("/todos/{id}/title"), &[("title", title)]).await;
        assert_eq!(r.status(), 422, "edit title {title:?}");
    }
    // 500 characters is still fine.
    add(&node, &"y".repeat(500)).await;
    let after: Vec<Value> = todos(&node).await;
    assert_eq!(after[0], before.0[0]);
    assert_eq!(after.len(), 2);
    node.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_statuses_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    let id = add(&node, "keep me").await;
    let before = (todos(&node).await, db_version(&node).await);
    let c = client();

    // Unknown ids: 404 page.
    for path in [
        "/todos/nope/toggle",
        "/todos/nope/delete",
        "/todos/nope/title",
    ] {
        let r = post_form(&node, path, &[("completed", "1"), ("title", "t")]).await;
        assert_eq!(r.status(), 404, "{path}");
        assert!(
            r.text()
                .await
                .expect("body")
                .contains("No todo has that id.")
        );
    }
    let r = post_form(&node, "/todos/nope/title", &[("title", "")]).await;
    assert_eq!(
        r.status(),
        404,
        "an invalid edit of a missing todo is still a 404"
    );
    let (status, _) = get_text(&node, "/no/such/page").await;
    assert_eq!(status, 404);

    // Malformed forms: 400.
    let r = post_form(&node, "/todos", &[("titel", "typo")]).await;
    assert_eq!(r.status(), 400);
    let r = post_form(
        &node,
        &format!("/todos/{id}/toggle"),
        &[("completed", "maybe")],
    )
    .await;
    assert_eq!(r.status(), 400);
    let (status, _) = get_text(&node, "/?filter=bogus").await;
    assert_eq!(status, 400);

    // Wrong content type: 415. Over the size limit: 413.
    let r = c
        .post(node.url("/todos"))
        .header("content-type", "application/json")
        .body(r#"{"title":"x"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 415);
    let huge = "x".repeat(64 * 1024);
    let r = post_form(&node, "/todos", &[("title", huge.as_str())]).await;
    assert_eq!(r.status(), 413);

    // Cross-site posts: 403, by Origin or by Sec-Fetch-Site.
    let r = c
        .post(node.url("/todos"))
        .header("origin", "https://evil.example")
        .form(&[("title", "csrf")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = c
        .post(node.url(&format!("/todos/{id}/delete")))
        .header("sec-fetch-site", "cross-site")
        .form(&[("return_to", "/")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    // A same-origin browser post is accepted.
    let r = c
        .post(node.url("/todos"))
        .header("origin", format!("http://{}", node.addr))
        .header("sec-fetch-site", "same-origin")
        .form(&[("title", "from the page")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    post_form(
        &node,
        &format!("/todos/{}/delete", add(&node, "tmp").await),
        &[],
    )
    .await;

    let after = todos(&node).await;
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], before.0[0], "bad requests left the data alone");
    node.stop().await;
}

#[tokio::test]
async fn html_in_titles_comes_back_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    let payload = r#"<script>alert("x")</script><img src=x onerror=alert(1)>"#;
    add(&node, payload).await;
    let (_, html) = get_text(&node, "/").await;
    assert!(!html.contains("<script>alert"), "no live script tag");
    assert!(!html.contains("<img src=x"), "no live img tag");
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;&#x2f;script&gt;"));
    // The API returns the title exactly as typed: escaping is the renderer's job.
    assert_eq!(todos(&node).await[0]["title"], payload);
    node.stop().await;
}

#[tokio::test]
async fn responses_carry_security_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    for path in ["/", "/health", "/static/style.css", "/missing"] {
        let r = client().get(node.url(path)).send().await.expect("get");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    let r = client()
        .get(node.url("/static/style.css"))
        .send()
        .await
        .expect("css");
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
    let etag = r.headers()["etag"].clone();
    let r = client()
        .get(node.url("/static/style.css"))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("css again");
    assert_eq!(r.status(), 304);
    node.stop().await;
}

#[tokio::test]
async fn health_reports_the_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = todo_node::Config::with_data_dir(dir.path());
    config.node_name = "node-a".to_owned();
    let node = TestNode::start_with(config).await;
    add(&node, "one").await;
    let h: Value = get_json(&node, "/health").await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["node_name"], "node-a");
    assert_eq!(h["todos"], 1);
    assert_eq!(h["db_version"], 1);
    assert_eq!(h["site_id"].as_str().expect("site id").len(), 32);
    assert_eq!(h["crsqlite_version"], "0.16.3");
    node.stop().await;
}

#[tokio::test]
async fn data_and_site_id_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    let id = add(&node, "remember me").await;
    post_form(&node, &format!("/todos/{id}/toggle"), &[("completed", "1")]).await;
    let site: Value = get_json(&node, "/health").await;
    node.stop().await;

    let node = TestNode::start(dir.path()).await;
    let all = todos(&node).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["title"], "remember me");
    assert_eq!(all[0]["completed"], true);
    let again: Value = get_json(&node, "/health").await;
    assert_eq!(site["site_id"], again["site_id"]);
    assert_eq!(again["db_version"], 2);
    node.stop().await;
}

async fn changes(node: &TestNode, query: &str) -> Value {
    get_json(node, &format!("/api/changes?{query}")).await
}

fn pk_of(id: &str) -> String {
    let packed =
        changeset::pack_columns(&[changeset::Value::Text(id.to_owned())]).expect("pack pk");
    hex::encode_upper(packed)
}

#[tokio::test]
async fn crsql_changes_hold_the_expected_rows_after_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    let kept = add(&node, "kept").await; // db_version 1
    let gone = add(&node, "gone").await; // 2
    post_form(
        &node,
        &format!("/todos/{kept}/toggle"),
        &[("completed", "1")],
    )
    .await; // 3
    post_form(&node, &format!("/todos/{gone}/delete"), &[]).await; // 4

    let page = changes(&node, "since=0").await;
    let site = page["site_id"].as_str().expect("site id").to_owned();
    assert_eq!(page["more"], false);
    assert_eq!(page["up_to"], 4);
    let rows: Vec<(String, String, Value, i64, i64, i64)> = page["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            assert_eq!(c["table"], "todos");
            assert_eq!(
                c["site_id"],
                site.as_str(),
                "local writes carry our site id"
            );
            (
                c["pk"].as_str().expect("pk").to_owned(),
                c["cid"].as_str().expect("cid").to_owned(),
                c["val"].clone(),
                c["col_version"].as_i64().expect("cv"),
                c["db_version"].as_i64().expect("dbv"),
                c["cl"].as_i64().expect("cl"),
            )
        })
        .collect();
    let (k, g) = (pk_of(&kept), pk_of(&gone));
    let expected = vec![
        // The insert of "kept": one change per column, col_version 1, no sentinel.
        (
            k.clone(),
            "title".into(),
            serde_json::json!(["text", "kept"]),
            1,
            1,
            1,
        ),
        (k.clone(), "created_at".into(), Value::Null, 1, 1, 1),
        // The toggle: only the changed column, col_version 2.
        (
            k.clone(),
            "completed".into(),
            serde_json::json!(["integer", 1]),
            2,
            3,
            1,
        ),
        // The delete of "gone": only its sentinel remains, causal length 2.
        (
            g.clone(),
            "-1".into(),
            serde_json::json!(["null", null]),
            2,
            4,
            2,
        ),
    ];
    // created_at's value is a timestamp: compare its type only.
    assert_eq!(rows.len(), expected.len(), "{rows:#?}");
    for (row, want) in rows.iter().zip(&expected) {
        assert_eq!(
            (&row.0, &row.1, row.3, row.4, row.5),
            (&want.0, &want.1, want.3, want.4, want.5)
        );
        if want.1 == "created_at" {
            assert_eq!(row.2[0], "integer");
        } else {
            assert_eq!(row.2, want.2);
        }
    }

    // Since a watermark: only what came after.
    let later = changes(&node, "since=3").await;
    assert_eq!(later["changes"].as_array().expect("changes").len(), 1);
    assert_eq!(later["up_to"], 4);
    node.stop().await;
}

#[tokio::test]
async fn change_pages_are_cut_on_whole_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    for i in 0..3 {
        add(&node, &format!("todo {i}")).await; // 3 changes per transaction
    }
    // A limit of 4 cannot hold two transactions: the page stops after the first (3 changes).
    let page = changes(&node, "since=0&limit=4").await;
    let got: Vec<i64> = page["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["db_version"].as_i64().expect("dbv"))
        .collect();
    assert_eq!(got, vec![1, 1, 1]);
    assert_eq!(page["more"], true);
    assert_eq!(page["up_to"], 1);
    // Following `up_to` walks the rest without gaps or repeats.
    let mut since = 1;
    let mut seen = got.len();
    loop {
        let page = changes(&node, &format!("since={since}&limit=4")).await;
        seen += page["changes"].as_array().expect("changes").len();
        since = page["up_to"].as_i64().expect("up_to");
        if page["more"] == false {
            break;
        }
    }
    assert_eq!(seen, 9);
    assert_eq!(since, 3);
    // A limit smaller than one transaction still returns that transaction whole.
    let page = changes(&node, "since=0&limit=1").await;
    assert_eq!(page["changes"].as_array().expect("changes").len(), 3);
    // A bad query is a 400 with a JSON error.
    let r = client()
        .get(node.url("/api/changes?since=-1"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    node.stop().await;
}

/// A browser replica's changes, as wasm-peer makes them: a todo written on site `site`.
fn browser_changes(site: u8, id: &str, title: &str) -> Value {
    use changeset::{Replica, SiteId, TableSchema, Value as V, Write};
    let mut replica = Replica::new(SiteId([site; 16]), vec![TableSchema::todos()]);
    replica
        .write(&[Write::Insert {
            table: "todos".into(),
            pk: vec![V::Text(id.into())],
            values: vec![
                ("title".into(), V::Text(title.into())),
                ("created_at".into(), V::Integer(7)),
            ],
        }])
        .expect("write");
    serde_json::json!({ "changes": replica.changes() })
}

async fn push(node: &TestNode, body: &Value) -> (u16, Value) {
    let r = client()
        .post(node.url("/api/changes"))
        .json(body)
        .send()
        .await
        .expect("push");
    (r.status().as_u16(), r.json().await.expect("JSON answer"))
}

#[tokio::test]
async fn pushed_changes_are_merged_once_and_bad_pushes_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    let id = "0192f6a0-7c1e-7aaa-8bbb-0123456789ab";
    let body = browser_changes(9, id, "written offline");

    let (status, answer) = push(&node, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["received"].as_u64(),
        body["changes"].as_array().map(|c| c.len() as u64)
    );
    assert!(answer["impacted"].as_i64().expect("impacted") > 0);
    let listed = todos(&node).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["title"], "written offline");
    assert_eq!(listed[0]["created_at"], 7);

    // The same push again (a retry after a lost answer) changes nothing.
    let version = db_version(&node).await;
    let (status, answer) = push(&node, &body).await;
    assert_eq!((status, answer["impacted"].as_i64()), (200, Some(0)));
    assert_eq!(db_version(&node).await, version);

    // Bad pushes: refused whole, with a reason, nothing merged.
    let mut wrong_type = browser_changes(8, "0192f6a0-7c1e-7aaa-8bbb-0000000000ff", "x");
    wrong_type["changes"][1]["val"] = serde_json::json!(["blob", "00"]);
    let unknown_column = {
        let mut b = browser_changes(8, "0192f6a0-7c1e-7aaa-8bbb-0000000000fe", "y");
        b["changes"][1]["cid"] = "owner".into();
        b
    };
    for (bad, expected) in [
        (wrong_type, 400),
        (unknown_column, 400),
        (serde_json::json!({ "changes": "none" }), 400),
        (serde_json::json!({}), 400),
    ] {
        let (status, answer) = push(&node, &bad).await;
        assert_eq!(status, expected, "{bad} -> {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = client()
        .post(node.url("/api/changes"))
        .body(body.to_string())
        .send()
        .await
        .expect("push as text");
    assert_eq!(r.status(), 415);
    assert_eq!(todos(&node).await.len(), 1);
    assert_eq!(db_version(&node).await, version);
}

#[tokio::test]
async fn a_new_todo_with_a_client_id_is_made_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    let id = "0192f6a0-7c1e-7aaa-8bbb-0123456789ab";
    for _ in 0..2 {
        let r = post_form(&node, "/todos", &[("title", "once"), ("id", id)]).await;
        assert_eq!(r.status(), 303);
    }
    let listed = todos(&node).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id);
    let r = post_form(&node, "/todos", &[("title", "x"), ("id", "../../etc")]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(todos(&node).await.len(), 1);
}

#[tokio::test]
async fn the_pwa_assets_are_served_with_their_types() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    let c = client();
    for (path, content_type) in [
        ("/sw.js", "text/javascript; charset=utf-8"),
        ("/static/manifest.webmanifest", "application/manifest+json"),
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/shell.html", "text/html; charset=utf-8"),
        (
            "/static/wasm/wasm_peer.js",
            "text/javascript; charset=utf-8",
        ),
        ("/static/wasm/wasm_peer_bg.wasm", "application/wasm"),
        ("/static/icons/icon-192.png", "image/png"),
        ("/static/icons/icon-512.png", "image/png"),
        ("/static/icons/icon.svg", "image/svg+xml"),
        ("/static/style.css", "text/css; charset=utf-8"),
    ] {
        let r = c.get(node.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], content_type, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{path}");
    }
    // The worker's cache is named after this build's assets.
    let sw = c
        .get(node.url("/sw.js"))
        .send()
        .await
        .expect("sw")
        .text()
        .await
        .expect("text");
    assert!(!sw.contains("__BUILD_VERSION__"));
    let version = todo_node::http::build_version();
    assert!(sw.contains(&format!("const VERSION = \"{version}\";")));
    let manifest: Value = get_json(&node, "/static/manifest.webmanifest").await;
    assert_eq!(manifest["display"], "standalone");
    assert_eq!(manifest["start_url"], "/");
    // Every PNG icon the manifest names is one, of the size it says (rendered from icon.svg).
    let icons = manifest["icons"].as_array().expect("icons");
    assert!(icons.iter().any(|i| i["purpose"] == "maskable"));
    for icon in icons.iter().filter(|i| i["type"] == "image/png") {
        let src = icon["src"].as_str().expect("src");
        let png = c
            .get(node.url(src))
            .send()
            .await
            .expect("icon")
            .bytes()
            .await
            .expect("bytes");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{src} is a PNG");
        let side = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
        let size = format!("{}x{}", side(16), side(20));
        assert_eq!(icon["sizes"], size.as_str(), "{src}");
    }
    let wasm = c
        .get(node.url("/static/wasm/wasm_peer_bg.wasm"))
        .send()
        .await
        .expect("wasm")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(&wasm[..4], b"\0asm");
}

/// What `path` answers with `accept_encoding`: its Content-Encoding, the body decoded, its ETag.
async fn fetch_encoded(
    node: &TestNode,
    path: &str,
    accept_encoding: &str,
) -> (Option<String>, Vec<u8>, Option<String>) {
    use std::io::Read;
    let r = client()
        .get(node.url(path))
        .header("accept-encoding", accept_encoding)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "{path} with {accept_encoding}");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii").to_owned())
    };
    let (encoding, etag) = (header("content-encoding"), header("etag"));
    let body = r.bytes().await.expect("body").to_vec();
    let mut decoded = Vec::new();
    match encoding.as_deref() {
        None => decoded = body,
        Some("br") => {
            brotli::Decompressor::new(&body[..], 4096)
                .read_to_end(&mut decoded)
                .expect("brotli");
        }
        Some("gzip") => {
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut decoded)
                .expect("gzip");
        }
        Some(other) => panic!("{path}: unexpected content-encoding {other}"),
    }
    (encoding, decoded, etag)
}

#[tokio::test]
async fn responses_are_compressed_for_clients_that_accept_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    for i in 0..20 {
        add(&node, &format!("todo {i}")).await;
    }
    // Precompressed assets (the wasm bundle, the app script) and the rendered page.
    for path in ["/static/wasm/wasm_peer_bg.wasm", "/static/app.js", "/"] {
        let (plain_encoding, plain, plain_etag) = fetch_encoded(&node, path, "identity").await;
        assert_eq!(plain_encoding, None, "{path}");
        for (accept, expected) in [("br;q=0.9, gzip;q=0.5", "br"), ("gzip", "gzip")] {
            let (encoding, decoded, etag) = fetch_encoded(&node, path, accept).await;
            assert_eq!(encoding.as_deref(), Some(expected), "{path} with {accept}");
            assert!(
                decoded == plain,
                "{path} in {expected} decodes to the same bytes"
            );
            // A strong ETag names the bytes, so each encoding has its own; a page's weak one
            // names its content, whatever the encoding.
            match plain_etag.as_deref() {
                Some(tag) if tag.starts_with("W/") => assert_eq!(etag, plain_etag, "{path}"),
                Some(_) => assert_ne!(etag, plain_etag, "{path}: each encoding has its own ETag"),
                None => {}
            }
        }
    }
    // What Chromium sends: the precompressed brotli twin for assets; tower-http picks zstd for
    // pages.
    let chromium = "gzip, deflate, br, zstd";
    let (encoding, _, _) = fetch_encoded(&node, "/static/app.js", chromium).await;
    assert_eq!(encoding.as_deref(), Some("br"));
    let r = client()
        .get(node.url("/"))
        .header("accept-encoding", chromium)
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["content-encoding"], "zstd");
    // Already-compressed images are sent as they are.
    let (encoding, _, _) = fetch_encoded(&node, "/static/icons/icon-192.png", "br, gzip").await;
    assert_eq!(encoding, None);
}

/// `GET path` with `If-None-Match: tag` (none when `None`): the status and the ETag answered.
async fn conditional_get(node: &TestNode, path: &str, tag: Option<&str>) -> (u16, String) {
    let mut request = client().get(node.url(path));
    if let Some(tag) = tag {
        request = request.header("if-none-match", tag);
    }
    let r = request.send().await.expect("get");
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), etag)
}

#[tokio::test]
async fn an_unchanged_page_is_answered_304_until_the_replica_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path()).await;
    add(&node, "first").await;
    let (status, tag) = conditional_get(&node, "/", None).await;
    assert_eq!(status, 200);
    assert!(tag.starts_with("W/\""), "a weak tag: {tag}");
    assert_eq!(
        conditional_get(&node, "/", Some(&tag)).await,
        (304, tag.clone())
    );
    // Another query is another page.
    let (status, active_tag) = conditional_get(&node, "/?filter=active", Some(&tag)).await;
    assert_eq!(status, 200);
    assert_ne!(active_tag, tag);

    // A local write changes the tag ...
    add(&node, "second").await;
    let (status, after_write) = conditional_get(&node, "/", Some(&tag)).await;
    assert_eq!(status, 200);
    assert_ne!(after_write, tag);
    // ... and so does a change merged from elsewhere (a browser's push).
    let body = browser_changes(9, "0192f6a0-7c1e-7aaa-8bbb-0123456789ab", "pushed");
    assert_eq!(push(&node, &body).await.0, 200);
    let (status, after_merge) = conditional_get(&node, "/", Some(&after_write)).await;
    assert_eq!(status, 200);
    assert_ne!(after_merge, after_write);
    // The same push again changes nothing, so the page is still the same.
    assert_eq!(push(&node, &body).await.0, 200);
    assert_eq!(
        conditional_get(&node, "/", Some(&after_merge)).await,
        (304, after_merge.clone())
    );
    // A restart keeps the data, and the tag.
    node.stop().await;
    let node = TestNode::start(dir.path()).await;
    assert_eq!(
        conditional_get(&node, "/", Some(&after_merge)).await,
        (304, after_merge)
    );
    node.stop().await;
}
