//! What templates/static/app.js does to pull, with the browser peer's own logic
//! (`wasm_peer::peer::Peer`) run natively: pages of `GET /api/changes?since=` until `more` is
//! false. Shared by node/tests/large.rs and node/benches/replication.rs.

use changeset::SiteId;
use wasm_peer::peer::Peer;

/// Pulls everything the node at `base` (`http://host:port`) holds into `browser`; returns how
/// many pages it took.
pub async fn pull_all(browser: &mut Peer, client: &reqwest::Client, base: &str) -> usize {
    let health: serde_json::Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("health json");
    let site: SiteId = health["site_id"]
        .as_str()
        .expect("site id")
        .parse()
        .expect("site id");
    let mut pages = 0;
    loop {
        let since = browser.watermark(site).0;
        let page = client
            .get(format!("{base}/api/changes?since={since}"))
            .send()
            .await
            .expect("pull")
            .text()
            .await
            .expect("page");
        pages += 1;
        if !browser
            .receive_page(&page)
            .expect("the browser merges the page")
        {
            return pages;
        }
    }
}
