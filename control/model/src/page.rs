//! Keyset pagination, newest first by `(created_at, id)` (wire-contract §6.2).

use chrono::{DateTime, Utc};

/// Where a page starts: strictly before this `(created_at, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    /// `created_at` of the last row of the previous page.
    pub ts: DateTime<Utc>,
    /// `id` of that row.
    pub id: String,
}

/// A page request.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// Rows wanted (1..=500).
    pub limit: i64,
    /// Continue after this row; `None` for the first page.
    pub after: Option<After>,
}

/// A page of rows and the key of its last row when more follow.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows, newest first.
    pub items: Vec<T>,
    /// Set when another page follows.
    pub next: Option<After>,
}

/// Rows that can be paged: they expose their keyset.
pub trait Keyed {
    /// `(created_at, id)`.
    fn key(&self) -> After;
}

impl<T: Keyed> Page<T> {
    /// Builds a page from `limit + 1` fetched rows.
    pub fn from_rows(mut rows: Vec<T>, limit: i64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(0);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = if more {
            rows.last().map(Keyed::key)
        } else {
            None
        };
        Self { items: rows, next }
    }
}

/// The `(ts, id)` bounds to bind: a first page binds the far future.
pub fn bounds(request: &PageRequest) -> (DateTime<Utc>, String) {
    match &request.after {
        Some(after) => (after.ts, after.id.clone()),
        None => (DateTime::<Utc>::MAX_UTC, String::new()),
    }
}
