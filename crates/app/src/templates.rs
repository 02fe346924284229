//! The MiniJinja environment: templates embedded at build time (release, wasm, edge), or read
//! from a folder on every render so a developer sees template edits without rebuilding.

use std::path::PathBuf;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("rendering template {template}")]
pub struct RenderError {
    pub template: String,
    #[source]
    pub source: minijinja::Error,
}

/// Where templates come from.
#[derive(Clone)]
pub enum Templates {
    Embedded(Box<Environment<'static>>),
    /// Development: every render reloads the folder (cheap for a handful of small files).
    Reloading(PathBuf),
}

impl Templates {
    /// The templates compiled into this binary.
    pub fn embedded() -> Self {
        let mut env = configured_environment();
        minijinja_embed::load_templates!(&mut env);
        Self::Embedded(Box::new(env))
    }

    /// Templates read from `dir` at each render.
    pub fn reloading(dir: impl Into<PathBuf>) -> Self {
        Self::Reloading(dir.into())
    }

    pub fn render<S: Serialize>(&self, name: &str, context: S) -> Result<String, RenderError> {
        let wrap = |source| RenderError {
            template: name.to_owned(),
            source,
        };
        let context = minijinja::Value::from(minijinja::value::Serde(context));
        match self {
            Self::Embedded(env) => env.get_template(name).and_then(|t| t.render(context)),
            Self::Reloading(dir) => {
                let mut env = configured_environment();
                env.set_loader(minijinja::path_loader(dir));
                env.get_template(name).and_then(|t| t.render(context))
            }
        }
        .map_err(wrap)
    }
}

fn configured_environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A template that reads a field the view model lacks is a bug: fail loudly, never print "".
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Drop the newlines and indentation of block tags: a 1,000-todo page is mostly loop output.
    match minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        Ok(syntax) => env.set_syntax(syntax),
        // Only custom delimiters can fail to build; with the defaults this cannot happen.
        Err(error) => debug_assert!(false, "default syntax config: {error}"),
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::todo::{Filter, Todo};
    use crate::view::{ErrorPage, FormError, IndexPage};

    fn todos() -> Vec<Todo> {
        vec![
            Todo {
                id: "0190a0b0-0000-7000-8000-000000000001".into(),
                title: "buy <b>milk</b> & \"eggs\"".into(),
                completed: false,
                created_at: 1,
            },
            Todo {
                id: "0190a0b0-0000-7000-8000-000000000002".into(),
                title: "walk the dog".into(),
                completed: true,
                created_at: 2,
            },
        ]
    }

    fn both() -> [Templates; 2] {
        [
            Templates::embedded(),
            Templates::reloading(concat!(env!("CARGO_MANIFEST_DIR"), "/../../templates")),
        ]
    }

    #[test]
    fn index_lists_todos_and_counts_with_titles_escaped() {
        for templates in both() {
            let page = IndexPage::new(&todos(), Filter::All, "node-a");
            let html = templates.render("index.html", &page).expect("renders");
            // MiniJinja's HTML escaping also escapes `/` (as &#x2f;).
            assert!(html.contains("buy &lt;b&gt;milk&lt;&#x2f;b&gt; &amp; &quot;eggs&quot;"));
            assert!(!html.contains("<b>milk</b>"));
            assert!(html.contains("walk the dog"));
            assert!(html.contains("1 item left"), "{html}");
        }
    }

    #[test]
    fn filter_hides_other_todos() {
        let page = IndexPage::new(&todos(), Filter::Completed, "node-a");
        let html = Templates::embedded()
            .render("index.html", &page)
            .expect("renders");
        assert!(html.contains("walk the dog"));
        assert!(!html.contains("milk"));
        assert!(html.contains(r#"name="return_to" value="&#x2f;?filter=completed""#));
    }

    #[test]
    fn form_error_is_shown_with_the_draft() {
        let page = IndexPage::new(&todos(), Filter::All, "n").with_form_error(FormError {
            message: "A todo needs a title.".into(),
            todo_id: None,
            draft: "<script>".into(),
        });
        let html = Templates::embedded()
            .render("index.html", &page)
            .expect("renders");
        assert!(html.contains("A todo needs a title."));
        assert!(html.contains("&lt;script&gt;"));
    }

    #[test]
    fn error_page_renders() {
        let page = ErrorPage {
            status: 404,
            title: "Not found".into(),
            message: "No todo has that id.".into(),
        };
        let html = Templates::embedded()
            .render("error.html", &page)
            .expect("renders");
        assert!(html.contains("No todo has that id."));
    }

    #[test]
    fn missing_template_is_an_error_not_a_panic() {
        let err = Templates::embedded()
            .render("nope.html", ())
            .expect_err("missing template");
        assert_eq!(err.template, "nope.html");
    }
}
