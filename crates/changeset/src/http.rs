//! The JSON of the HTTP sync API (`GET /api/changes` and `POST /api/changes`), which nodes
//! serve and browsers and the edge speak: one definition for all of them.

use serde::{Deserialize, Serialize};

use crate::{Change, DbVersion, Page, SiteId, SiteIdParseError};

/// A `GET /api/changes` answer: the answering replica's changes above `since`, cut on whole
/// db_versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangesPage {
    /// The answering replica's site id, hex.
    pub site_id: String,
    pub changes: Vec<Change>,
    /// Everything up to this db_version has been sent: the next `since`.
    pub up_to: u64,
    pub more: bool,
}

impl From<Page> for ChangesPage {
    fn from(page: Page) -> Self {
        Self {
            site_id: page.source.to_string(),
            changes: page.changes,
            up_to: page.up_to.0,
            more: page.more,
        }
    }
}

impl ChangesPage {
    /// The page as the sans-IO sync takes it; an error when `site_id` is not a site id.
    pub fn into_page(self) -> Result<Page, SiteIdParseError> {
        let source: SiteId = self.site_id.parse()?;
        Ok(Page {
            source,
            changes: self.changes,
            up_to: DbVersion(self.up_to),
            more: self.more,
        })
    }
}

/// A `POST /api/changes` body: `{"changes": [...]}`. Received as `PushBody` (owned changes),
/// sent as `PushBody<&[Change]>`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PushBody<C = Vec<Change>> {
    pub changes: C,
}

/// One push ready to send: its body, and how far the pusher's mark moves once a node has
/// acknowledged it (answered 200).
#[derive(Debug, Clone, PartialEq)]
pub struct PushBatch {
    pub body: String,
    pub up_to: DbVersion,
    pub changes: usize,
}

impl PushBatch {
    /// The push of `page`'s changes.
    pub fn of(page: &Page) -> Self {
        let body = serde_json::to_string(&PushBody {
            changes: &page.changes[..],
        })
        .unwrap_or_default();
        Self {
            body,
            up_to: page.up_to,
            changes: page.changes.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    fn page() -> Page {
        Page {
            source: SiteId([7; 16]),
            changes: vec![Change {
                table: "todos".into(),
                pk: vec![1, 11, 1, b'a'],
                cid: "title".into(),
                val: Value::Text("x".into()),
                col_version: 1,
                db_version: DbVersion(3),
                site_id: SiteId([7; 16]),
                cl: 1,
                seq: 0,
            }],
            up_to: DbVersion(3),
            more: false,
        }
    }

    #[test]
    fn a_page_goes_through_its_json_and_back() {
        let json = serde_json::to_string(&ChangesPage::from(page())).expect("json");
        let back: ChangesPage = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.into_page().expect("a site id"), page());
        let mut bad = ChangesPage::from(page());
        bad.site_id = "not hex".into();
        assert!(bad.into_page().is_err());
    }

    #[test]
    fn a_push_batch_is_the_body_a_node_reads() {
        let batch = PushBatch::of(&page());
        assert_eq!((batch.up_to, batch.changes), (DbVersion(3), 1));
        let body: PushBody = serde_json::from_str(&batch.body).expect("parses");
        assert_eq!(body.changes, page().changes);
    }
}
