//! Claim rules of an issuer: claims a token must carry with a matching value (a CI job's
//! `repository` and `ref`), and claim names given as one or several (`groups_claim`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use wildmatch::WildMatch;

use super::AuthError;

/// One name or a list of names, as TOML lets a key hold either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Vec<String> {
    fn from(value: OneOrMany) -> Self {
        match value {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// Claim names: `"groups"` or `["repository", "environment"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "OneOrMany")]
pub struct ClaimNames(pub Vec<String>);

impl From<OneOrMany> for ClaimNames {
    fn from(value: OneOrMany) -> Self {
        Self(value.into())
    }
}

/// Patterns (`*`, `?`) one claim must match, compiled once when the config is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "OneOrMany")]
pub struct ClaimPatterns {
    /// The patterns as written, for validation messages and docs.
    pub raw: Vec<String>,
    compiled: Vec<WildMatch>,
}

impl From<OneOrMany> for ClaimPatterns {
    fn from(value: OneOrMany) -> Self {
        let raw: Vec<String> = value.into();
        let compiled = raw.iter().map(|p| WildMatch::new(p)).collect();
        Self { raw, compiled }
    }
}

impl ClaimPatterns {
    fn matches(&self, value: &str) -> bool {
        self.compiled.iter().any(|p| p.matches(value))
    }
}

/// `required_claims`: claim name → patterns; every listed claim must be present and match.
pub type RequiredClaims = BTreeMap<String, ClaimPatterns>;

/// Refuses claims that miss a required claim or hold a value no pattern matches. A string is
/// matched as is, a number or boolean as its JSON text (GitLab's `ref_protected`), an array when
/// any string in it matches. The refusal names the claim, never its value.
pub(crate) fn check_required(claims: &Map<String, Value>, required: &RequiredClaims) -> Result<(), AuthError> {
    for (name, patterns) in required {
        let matched = match claims.get(name) {
            Some(Value::String(s)) => patterns.matches(s),
            Some(v @ (Value::Bool(_) | Value::Number(_))) => patterns.matches(&v.to_string()),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(|s| patterns.matches(s)),
            _ => {
                return Err(AuthError::ClaimRejected(format!("required claim {name:?} is missing")));
            }
        };
        if !matched {
            return Err(AuthError::ClaimRejected(format!(
                "claim {name:?} does not match this issuer's required_claims"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn required(toml: &str) -> RequiredClaims {
        #[derive(Deserialize)]
        struct T {
            required_claims: RequiredClaims,
        }
        toml::from_str::<T>(toml).expect("parses").required_claims
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    #[test]
    fn every_required_claim_must_match_one_pattern() {
        let rules =
            required("[required_claims]\nrepository = \"org/repo\"\nref = [\"refs/heads/main\", \"refs/tags/v*\"]\n");
        let ok = |v: Value| check_required(&claims(v), &rules);
        assert_eq!(ok(json!({"repository": "org/repo", "ref": "refs/heads/main"})), Ok(()));
        assert_eq!(ok(json!({"repository": "org/repo", "ref": "refs/tags/v1.2"})), Ok(()));
        for bad in [
            json!({"repository": "org/repo", "ref": "refs/heads/feature"}),
            json!({"repository": "org/repo2", "ref": "refs/heads/main"}),
            json!({"repository": "ORG/REPO", "ref": "refs/heads/main"}),
            json!({"ref": "refs/heads/main"}),
            json!({"repository": null, "ref": "refs/heads/main"}),
            json!({"repository": {"name": "org/repo"}, "ref": "refs/heads/main"}),
        ] {
            let err = ok(bad.clone()).expect_err("refused");
            let text = err.to_string();
            assert!(
                !text.contains("feature") && !text.contains("repo2"),
                "no value echoed: {text}"
            );
        }
    }

    #[test]
    fn booleans_numbers_and_arrays() {
        let rules = required("[required_claims]\nref_protected = \"true\"\nrun_attempt = \"1\"\naud = \"ci-*\"\n");
        let check = |v: Value| check_required(&claims(v), &rules);
        assert_eq!(
            check(json!({"ref_protected": true, "run_attempt": 1, "aud": ["x", "ci-prod"]})),
            Ok(())
        );
        assert!(check(json!({"ref_protected": false, "run_attempt": 1, "aud": "ci-prod"})).is_err());
        assert!(check(json!({"ref_protected": "true", "run_attempt": "2", "aud": "ci-prod"})).is_err());
        assert!(check(json!({"ref_protected": "true", "run_attempt": "1", "aud": ["x"]})).is_err());
    }

    #[test]
    fn identity_needs_the_rules_and_takes_groups_from_several_claims() {
        let mut config: crate::auth::IssuerConfig = toml::from_str(
            "issuer = \"https://ci\"\naudiences = [\"hawser\"]\njwks_file = \"k\"\n\
             username_prefix = \"ci:\"\ngroups_claim = [\"repository\", \"environment\"]\n\
             groups_prefix = \"ci:\"\n[required_claims]\nref = \"refs/heads/main\"\n",
        )
        .expect("parses");
        config.validate().expect("valid");
        let token = json!({"sub": "repo:org/repo:ref:refs/heads/main", "repository": "org/repo",
                           "environment": "prod", "ref": "refs/heads/main"});
        let id = crate::auth::claims::identity_from(&claims(token.clone()), &config).expect("maps");
        assert_eq!(id.user, "ci:repo:org/repo:ref:refs/heads/main");
        assert_eq!(id.groups, ["ci:org/repo", "ci:prod"]);
        let mut other = token;
        other["ref"] = json!("refs/heads/dev");
        assert!(matches!(
            crate::auth::claims::identity_from(&claims(other), &config),
            Err(AuthError::ClaimRejected(_))
        ));
        config
            .required_claims
            .insert("x".into(), ClaimPatterns::from(OneOrMany::Many(vec![])));
        assert!(
            config.validate().is_err(),
            "a rule without patterns would refuse every token"
        );
    }

    #[test]
    fn names_are_one_or_many() {
        #[derive(Deserialize)]
        struct T {
            a: ClaimNames,
            b: ClaimNames,
        }
        let t: T = toml::from_str("a = \"groups\"\nb = [\"repository\", \"environment\"]\n").expect("parses");
        assert_eq!(t.a.0, ["groups"]);
        assert_eq!(t.b.0, ["repository", "environment"]);
    }
}
