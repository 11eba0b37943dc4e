//! Whom a consent is about: a known person or an anonymous device, and the one storage form of
//! that key that every service and store shares.

use serde::{Deserialize, Serialize};

/// A subject: a known person or an anonymous device. Stored as `s:<id>` or `d:<id>` so the
/// two namespaces never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SubjectKey {
    /// A known person.
    Subject(String),
    /// An anonymous device.
    Device(String),
}

impl SubjectKey {
    /// The storage form.
    pub fn storage(&self) -> String {
        match self {
            SubjectKey::Subject(id) => format!("s:{id}"),
            SubjectKey::Device(id) => format!("d:{id}"),
        }
    }

    /// Parses the storage form.
    pub fn from_storage(text: &str) -> Option<SubjectKey> {
        if let Some(id) = text.strip_prefix("s:") {
            Some(SubjectKey::Subject(id.to_owned()))
        } else {
            text.strip_prefix("d:")
                .map(|id| SubjectKey::Device(id.to_owned()))
        }
    }

    /// The id without its namespace.
    pub fn id(&self) -> &str {
        match self {
            SubjectKey::Subject(id) | SubjectKey::Device(id) => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_form_round_trips_and_keeps_namespaces_apart() {
        for key in [
            SubjectKey::Subject("ana".into()),
            SubjectKey::Device("ana".into()),
            SubjectKey::Subject("s:x".into()),
        ] {
            assert_eq!(SubjectKey::from_storage(&key.storage()), Some(key.clone()));
        }
        assert_ne!(
            SubjectKey::Subject("a".into()).storage(),
            SubjectKey::Device("a".into()).storage()
        );
        assert_eq!(SubjectKey::from_storage("x:a"), None);
    }
}
