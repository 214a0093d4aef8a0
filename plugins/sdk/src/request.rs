//! Helpers on the shared types of the contract: the request, attributes and needs.

use crate::{Attribute, Call, Needs, RequestHead};

impl RequestHead {
    /// The first value of the header `name` (matched without regard to ASCII case), if the
    /// request has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// Every value of the header `name` (matched without regard to ASCII case), in arrival
    /// order.
    pub fn header_values<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value.as_str())
    }

    /// The path followed by `?` and the query when there is one: the request target as the
    /// upstream receives it (`/items?page=2`).
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{}", self.path, query),
            None => self.path.clone(),
        }
    }
}

impl Call {
    /// The first value of the inbound request's header `name`; see [`RequestHead::header`].
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request.header(name)
    }
}

impl Attribute {
    /// An audit attribute `key=value`.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl<K: Into<String>, V: Into<String>> From<(K, V)> for Attribute {
    fn from((key, value): (K, V)) -> Self {
        Attribute::new(key, value)
    }
}

impl Needs {
    /// Nothing beyond the request head (the default).
    pub const NOTHING: Needs = Needs { body_sha256: false };

    /// The SHA-256 of the request body, in [`RequestHead::body_sha256`].
    pub const BODY_SHA256: Needs = Needs { body_sha256: true };
}

impl Default for Needs {
    fn default() -> Self {
        Needs::NOTHING
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CallBuilder;

    #[test]
    fn header_lookup_ignores_ascii_case_and_returns_the_first_value() {
        let call = CallBuilder::new("GET", "/")
            .header("accept", "a")
            .header("x-tenant", "one")
            .header("x-tenant", "two")
            .build();
        assert_eq!(call.header("X-Tenant"), Some("one"));
        assert_eq!(
            call.request.header_values("x-tenant").collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert_eq!(call.header("x-missing"), None);
    }

    #[test]
    fn path_and_query_joins_with_a_question_mark_only_when_there_is_a_query() {
        let with_query = CallBuilder::new("GET", "/items").query("page=2").build();
        assert_eq!(with_query.request.path_and_query(), "/items?page=2");
        let without = CallBuilder::new("GET", "/items").build();
        assert_eq!(without.request.path_and_query(), "/items");
    }

    #[test]
    fn default_needs_ask_for_nothing() {
        assert!(!Needs::default().body_sha256);
        assert_eq!(Needs::BODY_SHA256, Needs { body_sha256: true });
    }

    #[test]
    fn an_attribute_is_built_from_a_pair() {
        let attribute = Attribute::from(("rule", "request-rules"));
        assert_eq!(
            (attribute.key.as_str(), attribute.value.as_str()),
            ("rule", "request-rules")
        );
    }
}
