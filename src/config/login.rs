//! `[login]` (relay): the identity provider people log in with, published so that
//! `hawser login --relay URL` and `hawser kubeconfig --relay URL --login` need nothing else.

use serde::{Deserialize, Serialize};

use crate::auth::IssuerConfig;

/// Where the relay publishes its `[login]`, without authentication (as a provider publishes
/// its discovery document: nothing in it is secret).
pub const PATH: &str = "/.well-known/hawser/login";

/// `[login]`: the provider and public client `hawser login` uses against this relay.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The provider's issuer: exactly one `[[issuers]]` entry's `issuer`.
    pub issuer: String,
    /// The public (PKCE) client registered at the provider for `hawser login`; one of that
    /// entry's `audiences`, as its ID tokens carry it in `aud`.
    pub client_id: String,
    /// Scopes to ask for beside `openid offline_access` (say `groups` for a provider that puts
    /// groups in the ID token only when asked).
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl LoginConfig {
    /// Checks that the relay trusts what people would log in to: the issuer is one of
    /// `issuers` and the client id one of its audiences.
    pub fn validate(&self, issuers: &[IssuerConfig]) -> Result<(), String> {
        let entry = issuers.iter().find(|i| i.issuer == self.issuer).ok_or_else(|| {
            format!(
                "login.issuer {:?} is not the issuer of any [[issuers]] entry: tokens from a login would be refused",
                self.issuer
            )
        })?;
        if !entry.audiences.contains(&self.client_id) {
            return Err(format!(
                "login.client_id {:?} is not among issuer {:?}'s audiences: its ID tokens would be refused",
                self.client_id, self.issuer
            ));
        }
        if self
            .scopes
            .iter()
            .any(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err("login.scopes: each scope is one non-empty word".into());
        }
        Ok(())
    }

    /// The document served at [`PATH`].
    pub fn document(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> IssuerConfig {
        let mut config = IssuerConfig::new("https://login.example.com/", vec!["hawser".to_owned()]);
        config.jwks_url = Some("https://login.example.com/keys".to_owned());
        config
    }

    #[test]
    fn the_login_must_name_a_trusted_issuer_and_one_of_its_audiences() {
        let login = |issuer: &str, client: &str| LoginConfig {
            issuer: issuer.to_owned(),
            client_id: client.to_owned(),
            scopes: vec!["groups".to_owned()],
        };
        assert_eq!(
            login("https://login.example.com/", "hawser").validate(&[issuer()]),
            Ok(())
        );
        let trailing = login("https://login.example.com", "hawser").validate(&[issuer()]);
        assert!(trailing.expect_err("another issuer").contains("not the issuer of any"));
        let client = login("https://login.example.com/", "other").validate(&[issuer()]);
        assert!(client.expect_err("another client").contains("audiences"));
        let mut spaced = login("https://login.example.com/", "hawser");
        spaced.scopes = vec!["a b".to_owned()];
        assert!(spaced.validate(&[issuer()]).is_err());
    }

    #[test]
    fn the_document_round_trips() {
        let login = LoginConfig {
            issuer: "https://login.example.com/".to_owned(),
            client_id: "hawser".to_owned(),
            scopes: vec![],
        };
        let back: LoginConfig = serde_json::from_str(&login.document()).expect("parses");
        assert_eq!(back, login);
    }
}
