//! A user's keys in memory: master key, X25519 identity and index key per keyring
//! generation (CRYPTO.md, "per user").
//!
//! A [`Keyring`] can only be built by the vault from an opened key slot; its fields are
//! private and wiped on drop. Every sealing helper binds the value to its place with
//! associated data, so rows cannot be swapped between messages or users undetected.

use crate::body;
use crate::primitives::{self, Aad, OpenFailed, hkdf32};
use crate::secret::{Secret32, SecretBytes};
use coffer_types::{BlobId, Generation, UserId};
use std::collections::BTreeMap;
use x25519_dalek::{PublicKey, StaticSecret};

/// Keys of one generation, derived from its master key.
pub struct GenerationKeys {
    generation: Generation,
    master: Secret32,
    identity: StaticSecret,
    public: PublicKey,
    index: Secret32,
}

impl GenerationKeys {
    /// Derives the identity and index key from a master key (HKDF-SHA256).
    pub(crate) fn derive(generation: Generation, master: Secret32) -> Self {
        let id_bytes = hkdf32(master.expose(), None, b"coffer/x25519");
        let identity = StaticSecret::from(*id_bytes.expose());
        let public = PublicKey::from(&identity);
        let index = hkdf32(master.expose(), None, b"coffer/index");
        GenerationKeys {
            generation,
            master,
            identity,
            public,
            index,
        }
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
    pub(crate) fn master(&self) -> &Secret32 {
        &self.master
    }
}

/// Where a sealed value lives; becomes its associated data. Names are fixed strings so
/// that a value sealed for one column never opens in another.
#[derive(Clone, Copy, Debug)]
pub enum Place<'a> {
    /// A mailbox row's sealed name and attributes, by the row's lookup hash (which the
    /// mail layer checks against the sealed name, binding the two).
    Mailbox(&'a [u8; 32]),
    /// A message's metadata, by message id.
    MessageMeta(&'a [u8; 16]),
    /// A message's flags and keywords, by message id.
    MessageFlags(&'a [u8; 16]),
    /// An app password's label, by slot id.
    SlotLabel(&'a [u8; 16]),
    /// Free-form per-user settings of the layers above.
    Setting(&'a str),
}

impl Place<'_> {
    fn aad(&self, user: &UserId, generation: Generation) -> Aad {
        let base = Aad::new("coffer/v1")
            .field(user.as_bytes())
            .u32(generation.0);
        match self {
            Place::Mailbox(lookup) => base.field(b"mailbox").field(*lookup),
            Place::MessageMeta(id) => base.field(b"message-meta").field(*id),
            Place::MessageFlags(id) => base.field(b"message-flags").field(*id),
            Place::SlotLabel(id) => base.field(b"slot-label").field(*id),
            Place::Setting(name) => base.field(b"setting").field(name.as_bytes()),
        }
    }
}

/// Associated data for values sealed by delivery to a public key; also binds the place.
pub fn delivery_aad(user: &UserId, generation: Generation, place: Place<'_>) -> Aad {
    place.aad(user, generation).field(b"to-public-key")
}

/// Error opening a sealed value with a keyring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring generation {0} is not open (mail from before a reset)")]
    GenerationClosed(Generation),
    #[error("{0} failed authentication: it was altered or does not belong here")]
    Tampered(String),
}

/// Every generation of one user's keys that the user has opened.
pub struct Keyring {
    user: UserId,
    current: Generation,
    generations: BTreeMap<Generation, GenerationKeys>,
    /// Decrypted data the layers above keep while the keyring is open (e.g. the flags of
    /// an open mailbox), dropped with the keys when the keyring is locked or expires.
    cache: std::sync::Mutex<Vec<Box<dyn std::any::Any + Send>>>,
}

impl Keyring {
    pub(crate) fn new(user: UserId, current: GenerationKeys) -> Self {
        let g = current.generation;
        let mut generations = BTreeMap::new();
        generations.insert(g, current);
        Keyring {
            user,
            current: g,
            generations,
            cache: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` with this keyring's cache entry of type `T` (created empty on first use).
    /// The cache lives exactly as long as the keys: "lock now" wipes it with them.
    pub fn with_cache<T: Default + Send + 'static, R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut entries = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let index = match entries.iter().position(|e| e.is::<T>()) {
            Some(i) => i,
            None => {
                entries.push(Box::new(T::default()));
                entries.len() - 1
            }
        };
        let entry = entries[index]
            .downcast_mut::<T>()
            .expect("entry has type T");
        f(entry)
    }

    pub(crate) fn add_old(&mut self, keys: GenerationKeys) {
        self.generations.insert(keys.generation, keys);
    }

    /// How many keyring generations are open (the current one and any reopened).
    pub fn generation_count(&self) -> usize {
        self.generations.len()
    }

    pub fn user_id(&self) -> &UserId {
        &self.user
    }
    pub fn current_generation(&self) -> Generation {
        self.current
    }
    pub fn has_generation(&self, g: Generation) -> bool {
        self.generations.contains_key(&g)
    }
    pub fn generations(&self) -> impl Iterator<Item = Generation> + '_ {
        self.generations.keys().copied()
    }

    pub(crate) fn master_of(&self, g: Generation) -> Option<&Secret32> {
        self.generations.get(&g).map(|k| &k.master)
    }

    pub(crate) fn current(&self) -> &GenerationKeys {
        &self.generations[&self.current]
    }

    fn keys(&self, g: Generation) -> Result<&GenerationKeys, KeyringError> {
        self.generations
            .get(&g)
            .ok_or(KeyringError::GenerationClosed(g))
    }

    pub fn public_key(&self) -> PublicKey {
        self.current().public
    }

    /// A sealer for the current generation's public key (no secret in it), to seal a body
    /// outside the keyring's lock, e.g. while streaming it to storage.
    pub fn public_sealer(&self) -> PublicSealer {
        let k = self.current();
        PublicSealer::new(self.user, k.generation, *k.public.as_bytes())
    }

    /// Seals a value under the current generation's index key.
    pub fn seal(&self, place: Place<'_>, plaintext: &[u8]) -> (Generation, Vec<u8>) {
        let k = self.current();
        (
            k.generation,
            primitives::seal(&k.index, &place.aad(&self.user, k.generation), plaintext),
        )
    }

    /// Seals a value under the index key of generation `g` (values that belong with mail
    /// of an older generation stay in that generation).
    pub fn seal_in(
        &self,
        g: Generation,
        place: Place<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyringError> {
        let k = self.keys(g)?;
        Ok(primitives::seal(
            &k.index,
            &place.aad(&self.user, g),
            plaintext,
        ))
    }

    /// Opens a value sealed under the index key of generation `g`.
    pub fn open(
        &self,
        g: Generation,
        place: Place<'_>,
        sealed: &[u8],
    ) -> Result<SecretBytes, KeyringError> {
        let k = self.keys(g)?;
        primitives::open(&k.index, &place.aad(&self.user, g), sealed)
            .map_err(|OpenFailed| KeyringError::Tampered(describe(&place)))
    }

    /// Opens a value that delivery sealed to generation `g`'s public key.
    pub fn open_delivered(
        &self,
        g: Generation,
        place: Place<'_>,
        sealed: &[u8],
    ) -> Result<SecretBytes, KeyringError> {
        let k = self.keys(g)?;
        primitives::open_from(&k.identity, &delivery_aad(&self.user, g, place), sealed)
            .map_err(|OpenFailed| KeyringError::Tampered(describe(&place)))
    }

    /// Seals a message body to the current generation.
    pub fn seal_body(&self, blob: &BlobId, body: &[u8]) -> (Generation, Vec<u8>) {
        let k = self.current();
        (
            k.generation,
            body::seal_body(&k.public, &self.user, blob, body),
        )
    }

    /// Opens a message body sealed to generation `g`.
    pub fn open_body(
        &self,
        g: Generation,
        blob: &BlobId,
        sealed: &[u8],
    ) -> Result<SecretBytes, KeyringError> {
        let k = self.keys(g)?;
        body::open_body(&k.identity, &self.user, blob, sealed)
            .map_err(|OpenFailed| KeyringError::Tampered(format!("message blob {blob}")))
    }

    /// Opens a sealed body as it streams from `sealed` (see [`body::BodyReader`]).
    pub fn open_body_reader<R: std::io::BufRead>(
        &self,
        g: Generation,
        blob: &BlobId,
        sealed: R,
    ) -> Result<body::BodyReader<R>, KeyringError> {
        let k = self.keys(g)?;
        body::open_body_reader(&k.identity, &self.user, blob, sealed)
            .map_err(|OpenFailed| KeyringError::Tampered(format!("message blob {blob}")))
    }

    /// The age identity string of generation `g`, for a user who exports their mail.
    pub fn export_identity(&self, g: Generation) -> Result<secrecy::SecretString, KeyringError> {
        Ok(body::age_identity(&self.keys(g)?.identity).to_string())
    }
}

fn describe(place: &Place<'_>) -> String {
    match place {
        Place::Mailbox(lookup) => format!("mailbox {}", coffer_types::hex(&lookup[..8])),
        Place::MessageMeta(id) => format!("metadata of message {}", coffer_types::hex(*id)),
        Place::MessageFlags(id) => format!("flags of message {}", coffer_types::hex(*id)),
        Place::SlotLabel(id) => format!("label of slot {}", coffer_types::hex(*id)),
        Place::Setting(name) => format!("setting {name}"),
    }
}

/// Sealing for delivery, which holds only a public key (CRYPTO.md, "Delivery while the
/// user is away").
#[derive(Clone)]
pub struct PublicSealer {
    user: UserId,
    generation: Generation,
    public: PublicKey,
}

impl PublicSealer {
    pub fn new(user: UserId, generation: Generation, public: [u8; 32]) -> Self {
        PublicSealer {
            user,
            generation,
            public: PublicKey::from(public),
        }
    }
    pub fn generation(&self) -> Generation {
        self.generation
    }
    pub fn seal(&self, place: Place<'_>, plaintext: &[u8]) -> Vec<u8> {
        primitives::seal_to(
            &self.public,
            &delivery_aad(&self.user, self.generation, place),
            plaintext,
        )
    }
    pub fn seal_body(&self, blob: &BlobId, body: &[u8]) -> Vec<u8> {
        body::seal_body(&self.public, &self.user, blob, body)
    }

    /// Seals a body straight into a writer (see [`body::seal_body_to`]).
    pub fn seal_body_to(
        &self,
        blob: &BlobId,
        body: &[u8],
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        body::seal_body_to(&self.public, &self.user, blob, body, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(user: u8) -> Keyring {
        Keyring::new(
            UserId([user; 32]),
            GenerationKeys::derive(Generation(1), Secret32::new([7; 32])),
        )
    }

    #[test]
    fn derivations_known_answer() {
        // HKDF-SHA256(ikm = 32 x 0x07, no salt, info) computed with Python's hmac module.
        let k = GenerationKeys::derive(Generation(1), Secret32::new([7; 32]));
        assert_eq!(coffer_types::hex(k.index.expose()), KAT_INDEX);
        assert_eq!(coffer_types::hex(k.public.as_bytes()), KAT_PUBLIC);
    }

    #[test]
    fn values_are_bound_to_user_place_and_generation() {
        let a = ring(1);
        let b = ring(2); // same master key, other user
        let id = [3u8; 16];
        let (g, sealed) = a.seal(Place::MessageFlags(&id), b"\\Seen");
        assert_eq!(
            a.open(g, Place::MessageFlags(&id), &sealed)
                .unwrap()
                .as_slice(),
            b"\\Seen"
        );
        assert!(
            a.open(g, Place::MessageMeta(&id), &sealed).is_err(),
            "other column"
        );
        assert!(
            a.open(g, Place::MessageFlags(&[4; 16]), &sealed).is_err(),
            "other row"
        );
        assert!(
            b.open(g, Place::MessageFlags(&id), &sealed).is_err(),
            "other user"
        );
        assert_eq!(
            a.open(Generation(2), Place::MessageFlags(&id), &sealed),
            Err(KeyringError::GenerationClosed(Generation(2)))
        );
    }

    #[test]
    fn delivery_seals_open_with_the_identity_only() {
        let a = ring(1);
        let sealer = PublicSealer::new(*a.user_id(), Generation(1), *a.public_key().as_bytes());
        let id = [5u8; 16];
        let sealed = sealer.seal(Place::MessageMeta(&id), b"meta");
        assert_eq!(
            a.open_delivered(Generation(1), Place::MessageMeta(&id), &sealed)
                .unwrap()
                .as_slice(),
            b"meta"
        );
        assert!(
            a.open(Generation(1), Place::MessageMeta(&id), &sealed)
                .is_err()
        );
        assert!(
            a.open_delivered(Generation(1), Place::MessageFlags(&id), &sealed)
                .is_err()
        );
        let blob = BlobId([6; 16]);
        let body = sealer.seal_body(&blob, b"hello");
        assert_eq!(
            a.open_body(Generation(1), &blob, &body).unwrap().as_slice(),
            b"hello"
        );
    }

    const KAT_INDEX: &str = "121dd05e9a132a11388e1570e2b731b34fde963d689d8c0ab133eed7bbc2dab9";
    const KAT_PUBLIC: &str = "0e68abc52cbc8c212f4f710b88ba4dfda590e54278c5d14ffd9fa2d494af8a78";
}
