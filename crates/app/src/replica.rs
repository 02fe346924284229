//! The todos of a `changeset` replica (the browser peer's and the edge's), as the pages and
//! forms use them ([`crate::site::Todos`]): the same rows and the same writes a node makes in
//! cr-sqlite, never a change that peers would refuse (`changeset::local_write_in_bounds`).

use changeset::{Change, EngineError, Replica, Value, Write, pack_columns};

use crate::site::{StoreError, Todos};
use crate::todo::Todo;

/// The replicated table.
pub const TODOS: &str = "todos";

/// Every todo of `replica`, in the node's order (created_at, then id).
pub fn list(replica: &Replica) -> Vec<Todo> {
    let mut todos: Vec<Todo> = replica
        .rows(TODOS)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [
                Value::Text(id),
                Value::Text(title),
                Value::Integer(completed),
                Value::Integer(created_at),
            ] => Some(Todo {
                id: id.clone(),
                title: title.clone(),
                completed: *completed != 0,
                created_at: *created_at,
            }),
            _ => None,
        })
        .collect();
    todos.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    todos
}

/// Whether a todo of that id exists (a lookup of its row, not a scan).
pub fn exists(replica: &Replica, id: &str) -> bool {
    let Ok(pk) = pack_columns(&[Value::Text(id.to_owned())]) else {
        return false;
    };
    // A row exists while its causal length is odd.
    replica
        .row_changes(TODOS, &pk)
        .first()
        .is_some_and(|c| c.cl % 2 == 1)
}

fn pk(id: &str) -> Vec<Value> {
    vec![Value::Text(id.to_owned())]
}

/// A replica's todos, applied in place (what the browser peer hands the site).
impl Todos for Replica {
    fn list(&self) -> Result<Vec<Todo>, StoreError> {
        Ok(list(self))
    }

    fn exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(exists(self, id))
    }

    fn add(&mut self, todo: Todo) -> Result<(), StoreError> {
        Recording::new(self).add(todo)
    }

    fn set_title(&mut self, id: &str, title: &str) -> Result<(), StoreError> {
        Recording::new(self).set_title(id, title)
    }

    fn set_completed(&mut self, id: &str, completed: bool) -> Result<(), StoreError> {
        Recording::new(self).set_completed(id, completed)
    }

    fn delete(&mut self, id: &str) -> Result<(), StoreError> {
        Recording::new(self).delete(id)
    }

    fn clear_completed(&mut self) -> Result<usize, StoreError> {
        Recording::new(self).clear_completed()
    }
}

/// A replica's todos that keeps the changes each write made, for a store that persists them
/// as rows (the edge).
pub struct Recording<'a> {
    pub replica: &'a mut Replica,
    /// Every change the writes made, in order.
    pub made: Vec<Change>,
}

impl<'a> Recording<'a> {
    pub fn new(replica: &'a mut Replica) -> Self {
        Self {
            replica,
            made: Vec::new(),
        }
    }

    fn write(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let in_range = |made: &[Change]| Ok(changeset::local_write_in_bounds(made)?);
        match self.replica.write_checked(writes, in_range) {
            Ok(made) => {
                self.made.extend(made);
                Ok(())
            }
            Err(EngineError::Refused(reason)) => Err(StoreError::Refused(reason.to_string())),
            Err(e) => Err(StoreError::Failed(Box::new(e))),
        }
    }

    fn update(&mut self, id: &str, column: &str, value: Value) -> Result<(), StoreError> {
        if !exists(self.replica, id) {
            return Err(StoreError::NotFound);
        }
        self.write(&[Write::Update {
            table: TODOS.into(),
            pk: pk(id),
            values: vec![(column.to_owned(), value)],
        }])
    }
}

impl Todos for Recording<'_> {
    fn list(&self) -> Result<Vec<Todo>, StoreError> {
        Ok(list(self.replica))
    }

    fn exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(exists(self.replica, id))
    }

    fn add(&mut self, todo: Todo) -> Result<(), StoreError> {
        if exists(self.replica, &todo.id) {
            return Ok(()); // a replayed post: the todo is there already
        }
        self.write(&[Write::Insert {
            table: TODOS.into(),
            pk: pk(&todo.id),
            values: vec![
                ("title".into(), Value::Text(todo.title)),
                ("completed".into(), Value::Integer(todo.completed.into())),
                ("created_at".into(), Value::Integer(todo.created_at)),
            ],
        }])
    }

    fn set_title(&mut self, id: &str, title: &str) -> Result<(), StoreError> {
        self.update(id, "title", Value::Text(title.to_owned()))
    }

    fn set_completed(&mut self, id: &str, completed: bool) -> Result<(), StoreError> {
        self.update(id, "completed", Value::Integer(completed.into()))
    }

    fn delete(&mut self, id: &str) -> Result<(), StoreError> {
        if !exists(self.replica, id) {
            return Err(StoreError::NotFound);
        }
        self.write(&[Write::Delete {
            table: TODOS.into(),
            pk: pk(id),
        }])
    }

    fn clear_completed(&mut self) -> Result<usize, StoreError> {
        let deletes: Vec<Write> = list(self.replica)
            .into_iter()
            .filter(|t| t.completed)
            .map(|t| Write::Delete {
                table: TODOS.into(),
                pk: pk(&t.id),
            })
            .collect();
        // A delete is one change: transactions of at most MAX_CHANGES_PER_TRANSACTION rows,
        // each of which replicates whole (changeset::validate), as on a node.
        for chunk in deletes.chunks(changeset::MAX_CHANGES_PER_TRANSACTION) {
            self.write(chunk)?;
        }
        Ok(deletes.len())
    }
}
