//! Errors of the storage layer. None of them carries user content: objects are named by
//! opaque ids only.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("stored data is damaged: {object}: {reason}")]
    Corrupt { object: String, reason: String },
    #[error("disk full while {0}: nothing was written")]
    DiskFull(String),
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(String),
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    #[error(
        "stored data has schema version {found}, this binary knows up to {known}; upgrade Coffer"
    )]
    SchemaTooNew { found: u32, known: u32 },
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        if source.kind() == std::io::ErrorKind::StorageFull {
            StoreError::DiskFull(context)
        } else {
            StoreError::Io { context, source }
        }
    }
}
