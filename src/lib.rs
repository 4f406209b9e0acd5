//! cloudmount: cloud storage accounts mounted as ordinary folders through FUSE.
//!
//! The layers, from the kernel down:
//! - [`fuse`]: translates kernel requests into filesystem calls (no logic of its own);
//! - [`mount_root`]: one directory per connection under a single mount point;
//! - [`vfs`]: the filesystem logic of one connection, testable without the kernel;
//! - [`metadata`], [`cache`], [`writeback`], [`versions`]: what the logic keeps locally;
//! - [`provider`]: the trait every storage backend implements, one module per backend, and
//!   the registry of connection types;
//! - [`secrets`]: how secrets are held and read from the configuration (a leaf module).

pub mod accounts;
pub mod cache;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fuse;
pub mod fuse_mount;
pub mod metadata;
pub mod metrics;
pub mod mount_root;
pub mod private_fs;
pub mod provider;
pub mod secrets;
pub mod versions;
pub mod vfs;
pub mod writeback;
