//! Every black-box test, in one test binary (`cargo nextest run --test
//! integration`; one file's tests: `cargo nextest run --test integration
//! relay::`). Each file below was a test binary of its own; each linked the
//! whole crate and `support` again, which took more time than running them
//! (Cargo.toml: `autotests = false`, so they are not built twice).

#[macro_use]
mod support;

mod auth;
mod browser;
mod cluster_lb;
mod faults;
mod game_sessions;
mod inspect;
mod js_client;
mod kubernetes;
mod limits;
mod metrics;
mod monitoring;
mod proxy;
mod redis_cluster;
mod relay;
mod resume;
mod rust_client;
mod security;
mod slow_client;
mod tls;
