//! The routes of CONTRACT.md, one module per audience. They share what they need through
//! modules outside this one (`operator` for the operator's token, `wire` for JSON shapes),
//! so this module only registers them and none of them uses it.

pub mod admin;
pub mod demo;
pub mod direct_notify;
pub mod live;
pub mod manage;
pub mod observability;
pub mod ops;
pub mod orders;
pub mod pages;
pub mod payments;
pub mod queue;
pub mod resellers;
pub mod webhooks;

use actix_web::web;

use crate::AppState;

/// Routes are tried in registration order, and every dynamic pattern passed costs a regex
/// match: the buyer's hot path (orders, payment callbacks, live sockets) goes first.
pub fn configure(config: &mut web::ServiceConfig, state: &AppState) {
    orders::configure(config);
    payments::configure(config, state);
    direct_notify::configure(config);
    crate::cluster::routes::configure(config);
    live::configure(config);
    admin::configure(config);
    manage::configure(config);
    queue::configure(config);
    resellers::configure(config);
    webhooks::configure(config);
    crate::openapi::configure(config);
    ops::configure(config);
    observability::configure(config);
    pages::configure(config);
    if state.demo {
        demo::configure(config);
    }
}
