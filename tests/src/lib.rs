//! Where the end-to-end tests find the real services.
//!
//! `ops/dev/services.sh up` starts RabbitMQ on 127.0.0.1:5672 and Garage on 127.0.0.1:3900 with
//! the development key and bucket below; `ops/dev/test.sh` runs it before the tests. Each value
//! can be overridden from the environment to point the tests at other services. A service that
//! is not there fails the test with a message saying how to start it: these tests never skip.

use inpaint_queue::BrokerConfig;
use inpaint_storage::{S3Config, StorageConfig};

/// Garage's development access key id (also in ops/dev/services.sh).
pub const DEV_ACCESS_KEY_ID: &str = "GK1a2b3c4d5e6f708192a3b4c5";
/// Garage's development secret key (also in ops/dev/services.sh). Not a secret: loopback only.
pub const DEV_SECRET_ACCESS_KEY: &str =
    "5ecf2a9e0b7d4c3f8a6e1d2c9b0a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a";
/// The bucket Garage creates at start-up.
pub const DEV_BUCKET: &str = "inpaint-dev";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The broker under test: `INPAINT_TEST_AMQP_URL`, default the local RabbitMQ.
pub fn broker_config() -> BrokerConfig {
    BrokerConfig {
        url: env_or(
            "INPAINT_TEST_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ),
        connection_name: "inpaint-e2e".into(),
    }
}

/// The S3 store under test: `INPAINT_TEST_S3_ENDPOINT` (default the local Garage) with
/// `INPAINT_TEST_S3_ACCESS_KEY_ID` / `INPAINT_TEST_S3_SECRET_ACCESS_KEY` (default the dev key).
pub fn s3_config() -> StorageConfig {
    StorageConfig::S3(S3Config {
        endpoint: Some(env_or("INPAINT_TEST_S3_ENDPOINT", "http://127.0.0.1:3900")),
        region: Some(env_or("INPAINT_TEST_S3_REGION", "garage")),
        path_style: true,
        allow_http: true,
        access_key_id: Some(env_or("INPAINT_TEST_S3_ACCESS_KEY_ID", DEV_ACCESS_KEY_ID)),
        secret_access_key: Some(env_or(
            "INPAINT_TEST_S3_SECRET_ACCESS_KEY",
            DEV_SECRET_ACCESS_KEY,
        )),
        ..S3Config::default()
    })
}

/// The bucket under test: `INPAINT_TEST_S3_BUCKET`, default [`DEV_BUCKET`].
pub fn bucket() -> String {
    env_or("INPAINT_TEST_S3_BUCKET", DEV_BUCKET)
}

/// The hint printed when a service is missing.
pub const START_SERVICES: &str =
    "start the services with `ops/dev/services.sh up` (ops/dev/test.sh does this for you)";
