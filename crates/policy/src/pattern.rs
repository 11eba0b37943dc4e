//! Dotted hierarchical keys (`marketing.communications.email`) and the patterns that match them.

/// The parent of a dotted key: `a.b.c` → `a.b`; a root key has none.
pub fn parent_key(key: &str) -> Option<&str> {
    key.rfind('.').map(|i| &key[..i])
}

/// True when `ancestor` is `key` itself or one of its dotted prefixes (`a.b` covers `a.b.c`, not `a.bc`).
pub fn is_ancestor_or_self(ancestor: &str, key: &str) -> bool {
    key == ancestor
        || (key.len() > ancestor.len()
            && key.starts_with(ancestor)
            && key.as_bytes()[ancestor.len()] == b'.')
}

/// A purpose pattern in the policy: `*` (everything), `a.b.*` (a.b and all below it) or an exact key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Matches every key.
    Any,
    /// Matches the key and every descendant.
    Subtree(String),
    /// Matches one key only.
    Exact(String),
}

impl Pattern {
    /// Parses `*`, `prefix.*` or an exact key.
    pub fn parse(text: &str) -> Pattern {
        if text == "*" {
            Pattern::Any
        } else if let Some(prefix) = text.strip_suffix(".*") {
            Pattern::Subtree(prefix.to_owned())
        } else {
            Pattern::Exact(text.to_owned())
        }
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Subtree(prefix) => is_ancestor_or_self(prefix, key),
            Pattern::Exact(exact) => exact == key,
        }
    }

    /// The key this pattern is rooted at (None for `*`), for validation against the taxonomy.
    pub fn root(&self) -> Option<&str> {
        match self {
            Pattern::Any => None,
            Pattern::Subtree(k) | Pattern::Exact(k) => Some(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestry_respects_dot_boundaries() {
        assert!(is_ancestor_or_self("a.b", "a.b"));
        assert!(is_ancestor_or_self("a.b", "a.b.c"));
        assert!(!is_ancestor_or_self("a.b", "a.bc"));
        assert!(!is_ancestor_or_self("a.b.c", "a.b"));
        assert_eq!(parent_key("a.b.c"), Some("a.b"));
        assert_eq!(parent_key("a"), None);
    }

    #[test]
    fn patterns_match_subtrees_and_exact_keys() {
        assert!(Pattern::parse("personalize.*").matches("personalize.content.profiled"));
        assert!(Pattern::parse("personalize.*").matches("personalize"));
        assert!(!Pattern::parse("personalize.*").matches("personalized"));
        assert!(Pattern::parse("a.b").matches("a.b"));
        assert!(!Pattern::parse("a.b").matches("a.b.c"));
        assert!(Pattern::parse("*").matches("anything"));
    }
}
