//! The Worker and its Durable Object: requests in, storage and outbound fetches out.
//!
//! Every request goes to one object (`REPLICA`, named "main"), so the edge is one replica. Its
//! handlers get `&self`: the state sits in a `RefCell`, borrowed only between awaits, and each
//! synchronous stretch (a form applied and its rows written) is one implicit storage
//! transaction of the object, durable before the answer leaves (the platform's output gate).

use std::cell::RefCell;

use app::replica::Recording;
use app::site::{self, Answer, Context};
use app::{Templates, Todo};
use changeset::{Change, Replica, SiteId, TableSchema};
use worker::{
    Date, DurableObject, Env, Headers, Method, Request, RequestInit, Response, Result, State,
    console_error, console_log, console_warn, durable_object, event, js_sys,
};

use crate::api;
use crate::config::Config;
use crate::store::{self, ChangeRow, NodeRow};
use crate::sync::{self, NodeState, Received, SyncError};

/// The Durable Object binding in wrangler.toml.
const BINDING: &str = "REPLICA";
/// A node that has not answered a request within this long counts as unreachable (and is
/// retried with backoff), so one silent node cannot hold a sync round.
const FETCH_TIMEOUT_MS: u32 = 10_000;

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: worker::Context) -> Result<Response> {
    console_error_panic_hook();
    let stub = env
        .durable_object(BINDING)?
        .id_from_name("main")?
        .get_stub()?;
    stub.fetch_with_request(req).await
}

fn console_error_panic_hook() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        std::panic::set_hook(Box::new(|info| console_error!("panic: {info}")));
    });
}

struct Edge {
    replica: Replica,
    nodes: Vec<NodeState>,
}

#[durable_object]
pub struct EdgeReplica {
    state: State,
    env: Env,
    templates: Templates,
    edge: RefCell<Option<Edge>>,
}

impl DurableObject for EdgeReplica {
    fn new(state: State, env: Env) -> Self {
        console_error_panic_hook();
        Self {
            state,
            env,
            templates: Templates::embedded(),
            edge: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let config = self.config()?;
        let fresh = self.load(&config)?;
        if fresh {
            // Start the sync loop with this object's life.
            self.state.storage().set_alarm(0i64).await?;
        }
        let method = req.method();
        let path = req.path();
        let url = req.url()?;
        let query = url.query().unwrap_or("").to_owned();
        // The body is read before any answer, whatever the answer: workerd refuses to read a
        // request's body after its response, and the next request on that connection fails.
        let body = if matches!(method, Method::Get | Method::Head | Method::Options) {
            Vec::new()
        } else {
            req.bytes().await?
        };
        let header = |name: &str| req.headers().get(name).ok().flatten();
        let content_type = header("content-type");
        let api = path == "/health" || path.starts_with("/api/");
        if api {
            if method == Method::Options {
                return cors(Response::empty()?.with_status(204));
            }
            let response = self
                .api(
                    &method,
                    &path,
                    &query,
                    content_type.as_deref(),
                    &body,
                    &config,
                )
                .await?;
            return cors(response);
        }
        if let Some(reason) = site::cross_site_refusal(
            method.as_ref(),
            &path,
            header("sec-fetch-site").as_deref(),
            header("origin").as_deref(),
            header("host").as_deref(),
        ) {
            console_warn!("refused cross-site request: {reason}");
            let answer = site::error_page(
                &self.templates,
                403,
                "Forbidden",
                format!("Refused a cross-site request: {reason}."),
            )
            .map_err(|e| worker::Error::RustError(e.to_string()))?;
            return page(answer);
        }
        let new_id = uuid_v7(Date::now().as_millis(), random_bytes());
        let context = Context {
            node_name: &config.edge_name,
            mode: "server",
            pending_changes: 0,
            now_ms: i64::try_from(Date::now().as_millis()).unwrap_or(0),
            new_id: &new_id,
        };
        let request = site::Request {
            method: method.as_ref(),
            path: &path,
            query: &query,
            content_type: content_type.as_deref(),
            body: &body,
        };
        let (answer, wrote) = {
            let mut guard = self.edge.borrow_mut();
            let edge = guard.as_mut().ok_or_else(not_loaded)?;
            let mut todos = Recording::new(&mut edge.replica);
            let answer = site::handle(request, &mut todos, &self.templates, &context);
            let made = std::mem::take(&mut todos.made);
            if !made.is_empty() {
                self.save_rows(&edge.replica, &made)?;
                edge.nodes.iter_mut().for_each(NodeState::wake);
            }
            (answer, !made.is_empty())
        };
        if wrote {
            // Push it (and pull) at once, after this answer.
            self.state.storage().set_alarm(0i64).await?;
        }
        match answer {
            Ok(answer) => page(answer),
            Err(error) => {
                console_error!("request failed: {error}");
                let answer = site::error_page(
                    &self.templates,
                    500,
                    "Server error",
                    "Something went wrong on the server. Nothing was changed; please try again."
                        .to_owned(),
                )
                .map_err(|e| worker::Error::RustError(e.to_string()))?;
                page(answer)
            }
        }
    }

    async fn alarm(&self) -> Result<Response> {
        let config = self.config()?;
        self.load(&config)?;
        let now = Date::now().as_millis() as f64;
        let due: Vec<usize> = {
            let guard = self.edge.borrow();
            let edge = guard.as_ref().ok_or_else(not_loaded)?;
            (0..edge.nodes.len())
                .filter(|&i| edge.nodes[i].next_try_ms <= now)
                .collect()
        };
        for i in due {
            let started = Date::now().as_millis() as f64;
            let result = self.sync_node(i).await;
            let finished = Date::now().as_millis() as f64;
            let mut guard = self.edge.borrow_mut();
            let edge = guard.as_mut().ok_or_else(not_loaded)?;
            let node = &mut edge.nodes[i];
            match result {
                Ok((pushed, pulled)) => {
                    if node.failures > 0 {
                        console_log!("node {} answers again", node.url);
                    }
                    if pushed + pulled > 0 {
                        console_log!(
                            "synced with {}: pushed {pushed}, pulled {pulled} changes in {} ms",
                            node.url,
                            finished - started
                        );
                    }
                    node.succeeded(finished, config.sync_interval_secs);
                }
                Err(error) => {
                    node.failed(finished, &error);
                    console_warn!(
                        "sync with {} failed ({} in a row, next try in {} ms): {error}",
                        node.url,
                        node.failures,
                        node.next_try_ms - finished
                    );
                }
            }
        }
        let next = {
            let guard = self.edge.borrow();
            let edge = guard.as_ref().ok_or_else(not_loaded)?;
            let now = Date::now().as_millis() as f64;
            edge.nodes
                .iter()
                .map(|n| n.next_try_ms)
                .fold(now + config.sync_interval_secs as f64 * 1000.0, f64::min)
        };
        let now = Date::now().as_millis() as f64;
        self.state
            .storage()
            .set_alarm((next - now).max(0.0) as i64)
            .await?;
        Response::empty()
    }
}

impl EdgeReplica {
    fn config(&self) -> Result<Config> {
        Config::from_vars(|name| self.env.var(name).ok().map(|v| v.to_string()))
            .map_err(|e| worker::Error::RustError(format!("wrangler.toml [vars]: {e}")))
    }

    /// Loads the replica from storage the first time; true when it did.
    fn load(&self, config: &Config) -> Result<bool> {
        if self.edge.borrow().is_some() {
            return Ok(false);
        }
        let started = Date::now().as_millis();
        let sql = self.state.storage().sql();
        for statement in store::SCHEMA {
            sql.exec(statement, None)?;
        }
        #[derive(serde::Deserialize)]
        struct Meta {
            value: String,
        }
        let site = match sql
            .exec(store::SELECT_SITE, None)?
            .to_array::<Meta>()?
            .pop()
        {
            Some(meta) => meta
                .value
                .parse::<SiteId>()
                .map_err(|e| worker::Error::RustError(format!("stored site id: {e}")))?,
            None => {
                let site = store::new_site_id(random_bytes());
                sql.exec(store::INSERT_SITE, vec![site.to_string().into()])?;
                site
            }
        };
        let rows = sql
            .exec(store::SELECT_CHANGES, None)?
            .to_array::<ChangeRow>()?;
        let count = rows.len();
        let changes = rows
            .into_iter()
            .map(Change::try_from)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| worker::Error::RustError(e.to_string()))?;
        let replica = Replica::from_changes(site, vec![TableSchema::todos()], &changes)
            .map_err(|e| worker::Error::RustError(format!("stored replica: {e}")))?;
        let stored: Vec<NodeRow> = sql.exec(store::SELECT_NODES, None)?.to_array()?;
        let nodes = config
            .node_urls
            .iter()
            .map(|url| {
                let mut node = NodeState::new(url.clone());
                if let Some(row) = stored.iter().find(|r| &r.url == url) {
                    node.site = row.site_id.as_deref().and_then(|s| s.parse().ok());
                    node.pushed_up_to = changeset::DbVersion(row.pushed_up_to.max(0) as u64);
                    if let Some(site) = node.site {
                        node.pulled =
                            [(site, changeset::DbVersion(row.pulled_up_to.max(0) as u64))]
                                .into_iter()
                                .collect();
                    }
                }
                node
            })
            .collect();
        console_log!(
            "edge replica loaded: site {site}, {count} change rows, db_version {}, in {} ms",
            replica.db_version().0,
            Date::now().as_millis() - started
        );
        *self.edge.borrow_mut() = Some(Edge { replica, nodes });
        Ok(true)
    }

    /// Rewrites the stored rows of every primary key `changes` touched, from `replica`.
    fn save_rows(&self, replica: &Replica, changes: &[Change]) -> Result<()> {
        let sql = self.state.storage().sql();
        let touched = changeset::stored::touched(changes);
        for (table, pk) in &touched {
            sql.exec(
                store::DELETE_ROW,
                vec![table.as_str().into(), hex::encode(pk).into()],
            )?;
        }
        let rows = replica.rows_of(touched.iter().map(|(t, p)| (t.as_str(), p.as_slice())));
        for change in &rows {
            let row = ChangeRow::from(change);
            let bindings = store::insert_bindings(&row)
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::Number(n) => n.as_i64().unwrap_or(0).into(),
                    serde_json::Value::String(s) => s.into(),
                    other => other.to_string().into(),
                })
                .collect::<Vec<worker::SqlStorageValue>>();
            sql.exec(store::INSERT_CHANGE, bindings)?;
        }
        Ok(())
    }

    fn save_node(&self, node: &NodeState) -> Result<()> {
        let sql = self.state.storage().sql();
        sql.exec(
            store::UPSERT_NODE,
            vec![
                node.url.as_str().into(),
                node.site.map(|s| s.to_string()).into(),
                i64::try_from(node.since().0).unwrap_or(0).into(),
                i64::try_from(node.pushed_up_to.0).unwrap_or(0).into(),
            ],
        )?;
        Ok(())
    }

    /// One round with node `i`: push what it lacks, then pull what it has. Returns the changes
    /// pushed and pulled.
    async fn sync_node(&self, i: usize) -> std::result::Result<(usize, usize), SyncError> {
        let storage = |e: worker::Error| SyncError::Storage(e.to_string());
        let url = self.with_edge(|edge| edge.nodes[i].url.clone())?;
        let (mut pushed, mut pulled) = (0, 0);
        loop {
            let batch = self.with_edge(|edge| sync::push_batch(&edge.replica, &edge.nodes[i]))?;
            let Some(batch) = batch else { break };
            if batch.changes > 0 {
                let (status, body) = http(
                    &format!("{url}/api/changes"),
                    Method::Post,
                    Some(batch.body),
                )
                .await?;
                if status != 200 {
                    return Err(SyncError::Refused { status, body });
                }
            }
            pushed += batch.changes;
            self.with_edge_mut(|edge| {
                let node = &mut edge.nodes[i];
                node.pushed_up_to = node.pushed_up_to.max(batch.up_to);
                self.save_node(node).map_err(storage)
            })??;
        }
        loop {
            let since = self.with_edge(|edge| edge.nodes[i].since())?;
            let (status, body) = http(
                &format!("{url}/api/changes?since={}", since.0),
                Method::Get,
                None,
            )
            .await?;
            if status != 200 {
                return Err(SyncError::Refused { status, body });
            }
            let more = self.with_edge_mut(|edge| {
                let received = sync::receive_page(&mut edge.replica, &mut edge.nodes[i], &body)?;
                let more = match received {
                    Received::NewSite => {
                        console_warn!("{url} answers as another site now; syncing from 0");
                        true
                    }
                    Received::Merged { incoming, more } => {
                        pulled += incoming.len();
                        self.save_rows(&edge.replica, &incoming).map_err(storage)?;
                        more
                    }
                };
                self.save_node(&edge.nodes[i]).map_err(storage)?;
                Ok::<_, SyncError>(more)
            })??;
            if !more {
                break;
            }
        }
        Ok((pushed, pulled))
    }

    fn with_edge<T>(&self, f: impl FnOnce(&Edge) -> T) -> std::result::Result<T, SyncError> {
        let guard = self.edge.borrow();
        let edge = guard
            .as_ref()
            .ok_or_else(|| SyncError::Storage("replica not loaded".into()))?;
        Ok(f(edge))
    }

    fn with_edge_mut<T>(
        &self,
        f: impl FnOnce(&mut Edge) -> T,
    ) -> std::result::Result<T, SyncError> {
        let mut guard = self.edge.borrow_mut();
        let edge = guard
            .as_mut()
            .ok_or_else(|| SyncError::Storage("replica not loaded".into()))?;
        Ok(f(edge))
    }

    async fn api(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        content_type: Option<&str>,
        body: &[u8],
        config: &Config,
    ) -> Result<Response> {
        let result: std::result::Result<serde_json::Value, api::ApiError> = match (path, &method) {
            ("/health", Method::Get | Method::Head) => self
                .with_edge(|edge| {
                    serde_json::to_value(api::health(&edge.replica, &edge.nodes, config))
                        .unwrap_or_default()
                })
                .map_err(internal),
            ("/api/todos", Method::Get | Method::Head) => self
                .with_edge(|edge| {
                    let todos: Vec<Todo> = app::replica::list(&edge.replica);
                    serde_json::to_value(todos).unwrap_or_default()
                })
                .map_err(internal),
            ("/api/peers", Method::Get | Method::Head) => self
                .with_edge(|edge| api::peers(&edge.replica, &edge.nodes, config))
                .map_err(internal),
            ("/api/changes", Method::Get | Method::Head) => self
                .with_edge(|edge| {
                    api::changes(&edge.replica, query)
                        .map(|page| serde_json::to_value(page).unwrap_or_default())
                })
                .map_err(internal)
                .and_then(|r| r),
            ("/api/changes", Method::Post) => {
                let merged = self
                    .with_edge_mut(|edge| {
                        let (outcome, incoming) = api::push(&mut edge.replica, content_type, body)?;
                        self.save_rows(&edge.replica, &incoming)
                            .map_err(|e| internal(SyncError::Storage(e.to_string())))?;
                        edge.nodes.iter_mut().for_each(NodeState::wake);
                        console_log!(
                            "merged changes pushed by a client: received {}, impacted {}",
                            outcome.received,
                            outcome.impacted
                        );
                        Ok(serde_json::to_value(outcome).unwrap_or_default())
                    })
                    .map_err(internal)
                    .and_then(|r| r);
                if merged.is_ok() {
                    self.state.storage().set_alarm(0i64).await?;
                }
                merged
            }
            _ => Err(api::ApiError {
                status: 404,
                message: "There is no such API.".into(),
            }),
        };
        match result {
            Ok(json) => Response::from_json(&json),
            Err(error) => Ok(Response::from_json(&error.body())?.with_status(error.status)),
        }
    }
}

fn internal(e: SyncError) -> api::ApiError {
    console_error!("api request failed: {e}");
    api::ApiError {
        status: 500,
        message: "Something went wrong on the server. Nothing was changed; please try again."
            .into(),
    }
}

fn not_loaded() -> worker::Error {
    worker::Error::RustError("replica not loaded".into())
}

/// One request to a node: its status and body text, or why it could not be made.
async fn http(
    url: &str,
    method: Method,
    json: Option<String>,
) -> std::result::Result<(u16, String), SyncError> {
    let unreachable = |e: worker::Error| SyncError::Unreachable(e.to_string());
    let headers = Headers::new();
    let mut init = RequestInit::new();
    init.with_method(method);
    if let Some(json) = json {
        headers
            .set("content-type", "application/json")
            .map_err(unreachable)?;
        init.with_body(Some(json.into()));
    }
    init.with_headers(headers);
    let request = Request::new_with_init(url, &init).map_err(unreachable)?;
    let signal = worker::AbortSignal::from(worker::web_sys::AbortSignal::timeout_with_u32(
        FETCH_TIMEOUT_MS,
    ));
    let mut response = worker::Fetch::Request(request)
        .send_with_signal(&signal)
        .await
        .map_err(unreachable)?;
    let body = response.text().await.map_err(unreachable)?;
    Ok((response.status_code(), body))
}

/// The site's answer, with the node's security headers.
fn page(answer: Answer) -> Result<Response> {
    let response = match answer {
        Answer::Redirect { location } => {
            let headers = Headers::new();
            headers.set("location", &location)?;
            Response::empty()?.with_status(303).with_headers(headers)
        }
        Answer::Page { status, html } => Response::from_html(html)?.with_status(status),
    };
    let headers = response.headers();
    headers.set("content-security-policy", site::CONTENT_SECURITY_POLICY)?;
    headers.set("x-content-type-options", "nosniff")?;
    headers.set("x-frame-options", "DENY")?;
    headers.set("referrer-policy", "same-origin")?;
    Ok(response)
}

/// The JSON API answers any origin, as a node's does (a page of another origin fails over
/// here).
fn cors(response: Response) -> Result<Response> {
    let headers = response.headers();
    headers.set("access-control-allow-origin", "*")?;
    headers.set("access-control-allow-methods", "GET, POST")?;
    headers.set("access-control-allow-headers", "content-type")?;
    headers.set("x-content-type-options", "nosniff")?;
    Ok(response)
}

/// 16 bytes from `crypto.getRandomValues` (the runtime's CSPRNG), for site ids and todo ids.
fn random_bytes() -> [u8; 16] {
    use worker::wasm_bindgen::{JsCast, JsValue};
    let mut out = [0u8; 16];
    let filled = (|| -> std::result::Result<(), JsValue> {
        let crypto = js_sys::Reflect::get(&js_sys::global(), &"crypto".into())?;
        let fill: js_sys::Function =
            js_sys::Reflect::get(&crypto, &"getRandomValues".into())?.dyn_into()?;
        let array = js_sys::Uint8Array::new_with_length(16);
        fill.call1(&crypto, &array)?;
        array.copy_to(&mut out);
        Ok(())
    })();
    if filled.is_err() {
        // No Web Crypto (never so on Workers): Math.random is still unique enough for ids.
        console_warn!("crypto.getRandomValues is missing; ids come from Math.random");
        for b in &mut out {
            *b = (js_sys::Math::random() * 256.0) as u8;
        }
    }
    out
}

/// A UUIDv7 (canonical lowercase) from a time in ms and random bytes.
fn uuid_v7(ms: u64, random: [u8; 16]) -> String {
    let mut b = random;
    for (i, byte) in ms.to_be_bytes()[2..].iter().enumerate() {
        b[i] = *byte;
    }
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
