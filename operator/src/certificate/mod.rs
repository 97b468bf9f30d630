//! Listener certificates of RelayPools: issued by the operator (`selfSigned`), brought
//! by the user (`secretName`) or requested from cert-manager (`certManager`), and in
//! every case checked before the pool is told it has one.

pub mod controller;
pub mod inspect;

pub use controller::{Context, run};
