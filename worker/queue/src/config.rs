//! [`BrokerConfig`]: how to reach RabbitMQ, as plain serde data.

use serde::{Deserialize, Serialize};

/// Where the broker is and how this process introduces itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// AMQP URL, `amqp://user:password@host:port/vhost` (`%2f` is the default vhost `/`);
    /// `amqps://` for TLS.
    pub url: String,
    /// Connection name shown in the RabbitMQ management UI.
    pub connection_name: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            connection_name: "inpaint-worker".into(),
        }
    }
}

impl BrokerConfig {
    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let userinfo = &self.url[scheme_end + 3..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                format!(
                    "{}{user}:***{}",
                    &self.url[..scheme_end + 3],
                    &self.url[at..]
                )
            }
            _ => self.url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        let config = BrokerConfig {
            url: "amqp://worker:s3cr3t@rabbit:5672/%2f".into(),
            ..BrokerConfig::default()
        };
        assert_eq!(config.redacted_url(), "amqp://worker:***@rabbit:5672/%2f");
        let no_credentials = BrokerConfig {
            url: "amqp://rabbit/%2f".into(),
            ..BrokerConfig::default()
        };
        assert_eq!(no_credentials.redacted_url(), "amqp://rabbit/%2f");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = serde_json::from_str::<BrokerConfig>(r#"{"uri":"amqp://x"}"#).expect_err("typo");
        assert!(err.to_string().contains("uri"), "{err}");
    }
}
