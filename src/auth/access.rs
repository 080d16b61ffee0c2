//! Access rules: which users and groups may reach which clusters (deny by default).

use serde::Deserialize;

use super::{ConfigError, Identity};

/// One rule: the listed users or groups may reach the listed clusters. Patterns use `*` and `?`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Cluster name patterns.
    pub clusters: Vec<String>,
    /// Username patterns (after the issuer's prefix).
    #[serde(default)]
    pub users: Vec<String>,
    /// Group patterns (after the issuer's prefix).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A validated list of access rules; an empty list allows nobody.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "Vec<AccessRule>")]
pub struct AccessRules {
    rules: Vec<AccessRule>,
}

impl TryFrom<Vec<AccessRule>> for AccessRules {
    type Error = ConfigError;

    fn try_from(rules: Vec<AccessRule>) -> Result<Self, ConfigError> {
        Self::new(rules)
    }
}

impl AccessRules {
    /// Validate the rules: each names clusters, names users or groups, and has no empty pattern.
    pub fn new(rules: Vec<AccessRule>) -> Result<Self, ConfigError> {
        for (index, rule) in rules.iter().enumerate() {
            let problem = |problem| ConfigError::AccessRule { index, problem };
            if rule.clusters.is_empty() {
                return Err(problem("lists no clusters"));
            }
            if rule.users.is_empty() && rule.groups.is_empty() {
                return Err(problem("lists no users and no groups"));
            }
            if rule
                .clusters
                .iter()
                .chain(&rule.users)
                .chain(&rule.groups)
                .any(String::is_empty)
            {
                return Err(problem("has an empty pattern"));
            }
        }
        Ok(Self { rules })
    }

    /// Whether `identity` may reach `cluster`: some rule matches the cluster and the user or a group.
    pub fn allows(&self, identity: &Identity, cluster: &str) -> bool {
        self.rules.iter().any(|rule| {
            rule.clusters.iter().any(|p| glob(p, cluster))
                && (rule.users.iter().any(|p| glob(p, &identity.user))
                    || rule.groups.iter().any(|p| identity.groups.iter().any(|g| glob(p, g))))
        })
    }
}

/// Match `text` against `pattern`, where `*` is any run of characters and `?` any one character.
///
/// Iterative with one backtrack point, so it runs in O(pattern × text) at worst and never recurses.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` seen and of the text when it was seen.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry.
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user: &str, groups: &[&str]) -> Identity {
        Identity {
            user: user.into(),
            uid: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            extra: Default::default(),
        }
    }

    fn rule(clusters: &[&str], users: &[&str], groups: &[&str]) -> AccessRule {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        AccessRule {
            clusters: own(clusters),
            users: own(users),
            groups: own(groups),
        }
    }

    #[test]
    fn globs() {
        for (pattern, text, ok) in [
            ("*", "", true),
            ("*", "anything", true),
            ("prod-*", "prod-eu", true),
            ("prod-*", "staging-eu", false),
            ("prod-?", "prod-1", true),
            ("prod-?", "prod-12", false),
            ("*-eu-*", "prod-eu-1", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("?", "é", true),
            ("oidc:*", "oidc:alice@example.com", true),
            ("a*a*a*a*b", &"a".repeat(200), false),
        ] {
            assert_eq!(glob(pattern, text), ok, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn deny_by_default() {
        let rules = AccessRules::new(Vec::new()).expect("valid");
        assert!(!rules.allows(&id("alice", &["admins"]), "prod"));
        assert!(!AccessRules::default().allows(&id("alice", &[]), "prod"));
    }

    #[test]
    fn users_or_groups_on_matching_clusters() {
        let rules = AccessRules::new(vec![
            rule(&["prod-*"], &["alice"], &["sre"]),
            rule(&["dev-?"], &[], &["oidc:dev*"]),
        ])
        .expect("valid");
        assert!(rules.allows(&id("alice", &[]), "prod-eu"));
        assert!(rules.allows(&id("bob", &["x", "sre"]), "prod-us"));
        assert!(!rules.allows(&id("bob", &["x"]), "prod-us"));
        assert!(!rules.allows(&id("alice", &[]), "staging"));
        assert!(rules.allows(&id("carol", &["oidc:developers"]), "dev-1"));
        assert!(!rules.allows(&id("carol", &["oidc:developers"]), "dev-10"));
        assert!(
            !rules.allows(&id("oidc:developers", &[]), "dev-1"),
            "user must not match group patterns"
        );
    }

    #[test]
    fn validation_and_toml() {
        assert!(AccessRules::new(vec![rule(&[], &["a"], &[])]).is_err());
        assert!(AccessRules::new(vec![rule(&["c"], &[], &[])]).is_err());
        assert!(AccessRules::new(vec![rule(&["c"], &[""], &[])]).is_err());
        assert!(AccessRules::new(vec![rule(&[""], &["a"], &[])]).is_err());
        #[derive(Deserialize)]
        struct File {
            access: AccessRules,
        }
        let ok: File = toml::from_str("[[access]]\nclusters = [\"*\"]\ngroups = [\"admins\"]\n").expect("parses");
        assert!(ok.access.allows(&id("x", &["admins"]), "any"));
        assert!(toml::from_str::<File>("[[access]]\nclusters = [\"*\"]\n").is_err());
        assert!(toml::from_str::<File>("[[access]]\nclusters = [\"*\"]\nusers = [\"a\"]\nrole = \"x\"\n").is_err());
    }
}
