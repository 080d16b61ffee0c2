//! Access rules: which users and groups may reach which clusters, and who may ask the relay
//! about the fleet (`admin`); deny by default.

use serde::Deserialize;
use wildmatch::WildMatch;

use super::{ConfigError, Identity};

/// One rule: the listed users or groups may reach the listed clusters, and with `admin` ask the
/// relay about the fleet (`hawser clusters`). Patterns use `*` and `?`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Cluster name patterns (may be empty in an admin rule).
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Username patterns (after the issuer's prefix).
    #[serde(default)]
    pub users: Vec<String>,
    /// Group patterns (after the issuer's prefix).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Whether the users or groups may ask the relay about the fleet: every cluster, its agents
    /// and the relays holding them (`GET /.well-known/hawser/clusters`, `hawser clusters`).
    #[serde(default)]
    pub admin: bool,
}

/// A validated list of access rules, patterns compiled; an empty list allows nobody.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "Vec<AccessRule>")]
pub struct AccessRules {
    rules: Vec<Compiled>,
}

/// A rule's patterns, compiled once (wildmatch: `*` and `?`, linear-time, no backtracking blow-up).
#[derive(Debug, Clone)]
struct Compiled {
    clusters: Vec<WildMatch>,
    users: Vec<WildMatch>,
    groups: Vec<WildMatch>,
    admin: bool,
}

impl Compiled {
    fn new(rule: &AccessRule) -> Self {
        let compile = |patterns: &[String]| patterns.iter().map(|p| WildMatch::new(p)).collect();
        Self {
            clusters: compile(&rule.clusters),
            users: compile(&rule.users),
            groups: compile(&rule.groups),
            admin: rule.admin,
        }
    }

    /// Whether the rule names the user or one of its groups.
    fn names(&self, identity: &Identity) -> bool {
        self.users.iter().any(|p| p.matches(&identity.user))
            || self.groups.iter().any(|p| identity.groups.iter().any(|g| p.matches(g)))
    }
}

impl TryFrom<Vec<AccessRule>> for AccessRules {
    type Error = ConfigError;

    fn try_from(rules: Vec<AccessRule>) -> Result<Self, ConfigError> {
        Self::new(rules)
    }
}

impl AccessRules {
    /// Validate the rules: each names clusters (or is an admin rule), names users or groups, and
    /// has no empty pattern.
    pub fn new(rules: Vec<AccessRule>) -> Result<Self, ConfigError> {
        for (index, rule) in rules.iter().enumerate() {
            let problem = |problem| ConfigError::AccessRule { index, problem };
            if rule.clusters.is_empty() && !rule.admin {
                return Err(problem(
                    "lists no clusters (only a rule with admin = true may list none)",
                ));
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
        Ok(Self {
            rules: rules.iter().map(Compiled::new).collect(),
        })
    }

    /// Whether `identity` may reach `cluster`: some rule matches the cluster and the user or a group.
    pub fn allows(&self, identity: &Identity, cluster: &str) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.clusters.iter().any(|p| p.matches(cluster)) && rule.names(identity))
    }

    /// Whether `identity` may ask the relay about the fleet: some rule with `admin = true` names
    /// the user or a group.
    pub fn admin(&self, identity: &Identity) -> bool {
        self.rules.iter().any(|rule| rule.admin && rule.names(identity))
    }
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
            admin: false,
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
            assert_eq!(WildMatch::new(pattern).matches(text), ok, "{pattern:?} vs {text:?}");
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

    #[test]
    fn admin_rules_name_who_may_ask_about_the_fleet_and_need_no_clusters() {
        #[derive(Deserialize)]
        struct File {
            access: AccessRules,
        }
        let file: File = toml::from_str(
            "[[access]]\nclusters = [\"dev-*\"]\nusers = [\"alice\"]\n\
             [[access]]\nusers = [\"root\"]\ngroups = [\"sre\"]\nadmin = true\n\
             [[access]]\nclusters = [\"prod\"]\nusers = [\"ops\"]\nadmin = true\n",
        )
        .expect("an admin rule may list no clusters");
        let rules = file.access;
        assert!(rules.admin(&id("root", &[])));
        assert!(rules.admin(&id("bob", &["sre"])));
        assert!(rules.admin(&id("ops", &[])));
        assert!(!rules.admin(&id("alice", &[])), "reaching clusters is not admin");
        assert!(
            !rules.allows(&id("root", &[]), "dev-1"),
            "admin reaches no cluster by itself"
        );
        assert!(
            rules.allows(&id("ops", &[]), "prod"),
            "an admin rule's clusters still apply"
        );
        assert!(rules.allows(&id("alice", &[]), "dev-1"));
        assert!(
            !AccessRules::default().admin(&id("root", &["sre"])),
            "nobody is admin by default"
        );
        // Without admin a rule still needs clusters; with it, it still needs users or groups.
        assert!(toml::from_str::<File>("[[access]]\nusers = [\"root\"]\n").is_err());
        assert!(toml::from_str::<File>("[[access]]\nusers = [\"root\"]\nadmin = false\n").is_err());
        assert!(toml::from_str::<File>("[[access]]\nadmin = true\n").is_err());
        assert!(toml::from_str::<File>("[[access]]\nusers = [\"\"]\nadmin = true\n").is_err());
    }
}
