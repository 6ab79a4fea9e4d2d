//! The built-in autoscaler: workers that follow the backlog.
//!
//! `decide` is the pure step (load and history in, a worker count and its reason out);
//! `cost` says which worker pods the ReplicaSet controller should remove first, so that a
//! scale-in takes idle workers and leaves busy ones to finish.

pub mod cost;
pub mod decide;

pub use decide::{Decision, Load, Policy, Reason, Recommendations};
