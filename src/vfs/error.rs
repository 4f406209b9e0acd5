//! The filesystem layer's error type, and the one place errors become errno values.

use crate::cache::CacheError;
use crate::metadata::StoreError;
use crate::provider::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("read-only file system")]
    ReadOnly,
    #[error("permission denied: {0}")]
    Access(String),
    /// Something the provider (or cloudmount) cannot represent: hard links, names
    /// reserved for cloudmount's own use.
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("no space left")]
    NoSpace,
    #[error("file too large")]
    TooBig,
    #[error("no such attribute")]
    NoAttr,
    #[error("result does not fit the buffer")]
    Range,
    #[error("bad file handle")]
    BadHandle,
    /// A move between two drives of one connection (the provider cannot move between
    /// them; `mv` copies instead).
    #[error("cross-device move: {0}")]
    CrossDevice(String),
    #[error("remote unavailable: {0}")]
    Unavailable(String),
    #[error("I/O error: {0}")]
    Io(String),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::Access(_) => libc::EACCES,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::NoSpace => libc::ENOSPC,
            FsError::TooBig => libc::EFBIG,
            FsError::NoAttr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::BadHandle => libc::EBADF,
            FsError::CrossDevice(_) => libc::EXDEV,
            // A network that is down is an I/O failure to the program that asked.
            FsError::Unavailable(_) | FsError::Io(_) => libc::EIO,
        }
    }
}

impl From<ProviderError> for FsError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::NotFound(_) => FsError::NotFound,
            ProviderError::AlreadyExists(_) => FsError::Exists,
            ProviderError::NotADirectory(_) => FsError::NotDir,
            ProviderError::IsADirectory(_) => FsError::IsDir,
            ProviderError::DirectoryNotEmpty(_) => FsError::NotEmpty,
            ProviderError::Auth(m) | ProviderError::PermissionDenied(m) => FsError::Access(m),
            ProviderError::Unsupported(m) => FsError::NotPermitted(m),
            ProviderError::InvalidName(m) => FsError::Invalid(m),
            ProviderError::InsufficientStorage => FsError::NoSpace,
            e @ (ProviderError::RateLimited { .. } | ProviderError::Transient(_)) => {
                FsError::Unavailable(e.to_string())
            }
            e => FsError::Io(e.to_string()),
        }
    }
}

impl From<CacheError> for FsError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Provider(p) => p.into(),
            CacheError::NoSpace => FsError::NoSpace,
            e => FsError::Io(e.to_string()),
        }
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        FsError::Io(e.to_string())
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) => FsError::NoSpace,
            Some(libc::EFBIG) => FsError::TooBig,
            _ => FsError::Io(e.to_string()),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
