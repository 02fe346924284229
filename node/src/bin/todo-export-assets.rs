//! `todo-export-assets <dir>`: writes the assets this build of the node serves into `<dir>`
//! (`static/…` and `sw.js`), for the edge worker to serve the same files (ci/build-edge.sh).

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .context("usage: todo-export-assets <dir>")?;
    if !todo_node::BUILD_PROBLEMS.is_empty() {
        anyhow::bail!(
            "this build lacks what it embeds:\n- {}",
            todo_node::BUILD_PROBLEMS.join("\n- ")
        );
    }
    let dir = std::path::PathBuf::from(dir);
    let files = todo_node::http::export_assets(&dir)
        .with_context(|| format!("writing the assets into {}", dir.display()))?;
    eprintln!(
        "{files} files written into {} (build {})",
        dir.display(),
        todo_node::http::build_version()
    );
    Ok(())
}
