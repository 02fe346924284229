//! Embeds every template under the workspace's templates/ folder into the crate, so release
//! binaries (and the wasm peer) carry them and need no files at run time.
fn main() {
    minijinja_embed::embed_templates!("../../templates", &[".html"]);
}
