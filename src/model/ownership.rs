//! Who owns a piece of work and who may see it: the [`Ownership`] that tasks, executions and
//! registered workflows carry (the principal that created them and its tenant), and the
//! [`Scope`] of a caller (every tenant, or one). Plain data: nothing here knows how callers
//! authenticate.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The principal that created a piece of work, and its tenant. Work created without
/// authentication has none. The names are shared: the tasks and executions a principal's calls
/// make hold the principal's own (a copy is a count, not an allocation); one read back from a
/// store holds names of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    /// The principal's name.
    pub owner: Arc<str>,
    /// The principal's tenant: every principal of it sees the work.
    pub tenant: Arc<str>,
}

/// What a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant's work (admins, and every caller without authentication).
    All,
    /// Only this tenant's work.
    Tenant(Arc<str>),
}

impl Scope {
    /// Whether work with `ownership` is visible in this scope. Unowned work is visible to
    /// [`Scope::All`] only.
    pub fn sees(&self, ownership: Option<&Ownership>) -> bool {
        match self {
            Self::All => true,
            Self::Tenant(tenant) => ownership.is_some_and(|o| o.tenant == *tenant),
        }
    }

    /// The tenant a scoped caller is limited to; `None` for [`Scope::All`].
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Self::All => None,
            Self::Tenant(tenant) => Some(tenant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_sees_its_own_work_only() {
        let mine = Ownership {
            owner: "alice".into(),
            tenant: "a".into(),
        };
        let theirs = Ownership {
            owner: "bob".into(),
            tenant: "b".into(),
        };
        let scope = Scope::Tenant("a".into());
        assert!(scope.sees(Some(&mine)));
        assert!(!scope.sees(Some(&theirs)));
        assert!(!scope.sees(None));
        assert!(Scope::All.sees(None) && Scope::All.sees(Some(&theirs)));
    }
}
