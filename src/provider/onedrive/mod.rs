//! OneDrive and SharePoint over Microsoft Graph (in progress: issue 10). So far only the
//! content hash; the provider follows on the shared kit.

pub mod quickxor;
