//! The devices this daemon knows: every device it completed a call with, or that
//! the user named, trusted or blocked, with the names each has used. Pure: the
//! store keeps the rows, this decides what they mean: how a peer stands
//! ([`Standing`]), whether a name it claims belongs to another known device (an
//! impostor, or a reinstalled machine: never merged silently), and which device
//! a name dials.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::device_id::DeviceId;
use crate::vocab::clean_text;

/// What the user decided about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Standing {
    /// Known from a call; nothing decided.
    Known,
    /// May ring even when only trusted devices may; auto-answered if so set.
    Trusted,
    /// Never rings; its requests are refused before anything else happens.
    Blocked,
}

impl Standing {
    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Known => "known",
            Standing::Trusted => "trusted",
            Standing::Blocked => "blocked",
        }
    }

    /// The standing a stored word names.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "known" => Some(Standing::Known),
            "trusted" => Some(Standing::Trusted),
            "blocked" => Some(Standing::Blocked),
            _ => None,
        }
    }
}

/// A device the daemon knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Its identity.
    pub device_id: DeviceId,
    /// The display names it has used, most recent first.
    pub names: Vec<String>,
    /// The user's own name for it.
    pub alias: Option<String>,
    /// What the user decided.
    pub standing: Standing,
    /// The user compared safety numbers with it.
    pub verified: bool,
    /// When it was first known.
    pub first_seen: SystemTime,
    /// When it was last in a call or seen.
    pub last_seen: SystemTime,
}

impl Contact {
    /// What to call it: the alias, else its latest name, else its short ID.
    pub fn label(&self) -> String {
        self.alias.clone().or_else(|| self.names.first().cloned()).unwrap_or_else(|| self.device_id.short())
    }

    /// Whether `name` is one this device answers to (its alias or a name it used),
    /// compared as [`same_name`] does.
    pub fn answers_to(&self, name: &str) -> bool {
        self.alias.iter().chain(&self.names).any(|candidate| same_name(candidate, name))
    }
}

/// Whether two names are the same to a person: in one Unicode form, without
/// case, and without the invisible characters (zero-width, bidi controls) that
/// could make a look-alike differ from the name it copies.
pub fn same_name(a: &str, b: &str) -> bool {
    let visible = |s: &str| -> String { clean_text(s, usize::MAX).chars().flat_map(char::to_lowercase).collect() };
    visible(a) == visible(b)
}

/// Every known device, by ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contacts {
    by_id: BTreeMap<DeviceId, Contact>,
}

/// How a peer stands with us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStanding {
    /// Never in a call with us, never named by the user.
    Unknown,
    /// A known device, and what the user decided about it.
    Known(Standing),
}

impl Contacts {
    /// From stored rows.
    pub fn new(contacts: impl IntoIterator<Item = Contact>) -> Self {
        Contacts { by_id: contacts.into_iter().map(|c| (c.device_id, c)).collect() }
    }

    /// One device.
    pub fn get(&self, id: &DeviceId) -> Option<&Contact> {
        self.by_id.get(id)
    }

    /// Every device, by ID.
    pub fn iter(&self) -> impl Iterator<Item = &Contact> {
        self.by_id.values()
    }

    /// How `id` stands.
    pub fn standing(&self, id: &DeviceId) -> PeerStanding {
        self.by_id.get(id).map_or(PeerStanding::Unknown, |c| PeerStanding::Known(c.standing))
    }

    /// The known device that answers to `name` when `id` (a different device)
    /// claims it: the name belongs to someone else we know. `None` when the name
    /// is free or is `id`'s own.
    pub fn name_claimed_by_other(&self, id: &DeviceId, name: &str) -> Option<&Contact> {
        if self.by_id.get(id).is_some_and(|own| own.answers_to(name)) {
            return None;
        }
        // A blocked device's name is not worth protecting.
        self.by_id.values().find(|c| c.device_id != *id && c.standing != Standing::Blocked && c.answers_to(name))
    }

    /// The devices a dialed name means among those online (`(id, advertised
    /// name)`): the known device that answers to it (by alias or a name it used),
    /// never a stranger that took its name; otherwise the online devices that
    /// advertise it.
    pub fn resolve<'a>(&self, name: &str, online: impl IntoIterator<Item = (&'a DeviceId, &'a str)>) -> Vec<DeviceId> {
        let online: Vec<(&DeviceId, &str)> = online.into_iter().collect();
        let known: Vec<DeviceId> = online
            .iter()
            .filter(|(id, _)| self.by_id.get(id).is_some_and(|c| c.answers_to(name)))
            .map(|(id, _)| **id)
            .collect();
        if !known.is_empty() {
            return known;
        }
        online
            .iter()
            .filter(|(id, advertised)| {
                same_name(advertised, name) && self.name_claimed_by_other(id, advertised).is_none()
            })
            .map(|(id, _)| **id)
            .collect()
    }
}

/// A peer that claims the name of another device we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameClaim {
    /// The peer making the claim.
    pub peer: DeviceId,
    /// The name it advertises.
    pub claimed: String,
    /// The known device the name belongs to.
    pub known: DeviceId,
}

/// Which peers claim a known device's name, so that each claim is announced
/// once: when it starts (a peer appears or renames itself, or the user comes to
/// know the device whose name it took), not on every change of the peer.
#[derive(Debug, Default)]
pub struct NameClaims {
    /// Peer → the known device whose name it claims, as last reported.
    claiming: BTreeMap<DeviceId, DeviceId>,
}

impl NameClaims {
    /// Looks at one peer advertising `name`; returns its claim if the claim is
    /// new (not the one last reported for this peer).
    pub fn check(&mut self, peer: DeviceId, name: &str, contacts: &Contacts) -> Option<NameClaim> {
        match contacts.name_claimed_by_other(&peer, name) {
            None => {
                self.claiming.remove(&peer);
                None
            }
            Some(known) => {
                let known = known.device_id;
                (self.claiming.insert(peer, known) != Some(known)).then(|| NameClaim {
                    peer,
                    claimed: name.to_owned(),
                    known,
                })
            }
        }
    }

    /// The peer is gone: a claim it makes when it comes back is new again.
    pub fn gone(&mut self, peer: &DeviceId) {
        self.claiming.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> DeviceId {
        DeviceId::from_hash([byte; 32])
    }

    fn contact(byte: u8, name: &str, standing: Standing) -> Contact {
        Contact {
            device_id: id(byte),
            names: vec![name.to_owned()],
            alias: None,
            standing,
            verified: false,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_stranger_using_a_known_name_is_flagged_and_never_dialed_by_it() {
        let contacts = Contacts::new([contact(1, "alice", Standing::Known)]);
        let (real, impostor) = (id(1), id(9));
        assert_eq!(contacts.name_claimed_by_other(&impostor, "Alice").map(|c| c.device_id), Some(real));
        assert_eq!(contacts.name_claimed_by_other(&real, "alice"), None, "her own name");
        assert_eq!(contacts.standing(&impostor), PeerStanding::Unknown);

        // Both online: the name dials the real one.
        let online = [(&real, "alice"), (&impostor, "alice")];
        assert_eq!(contacts.resolve("alice", online), [real]);
        // Only the impostor online: the name dials nobody.
        assert_eq!(contacts.resolve("alice", [(&impostor, "alice")]), []);
        // A name no one we know uses: whoever advertises it.
        let carol = id(3);
        assert_eq!(contacts.resolve("carol", [(&carol, "carol")]), [carol]);
    }

    #[test]
    fn an_alias_dials_its_device_whatever_name_it_advertises() {
        let mut bob = contact(2, "bob-laptop", Standing::Trusted);
        bob.alias = Some("Bob".into());
        let contacts = Contacts::new([bob]);
        let bob_id = id(2);
        assert_eq!(contacts.resolve("bob", [(&bob_id, "new-hostname")]), [bob_id]);
        assert_eq!(contacts.standing(&bob_id), PeerStanding::Known(Standing::Trusted));
        assert_eq!(contacts.get(&bob_id).map(Contact::label).as_deref(), Some("Bob"));
    }

    #[test]
    fn look_alike_names_are_the_same_name_and_cleaned_names_are_safe_to_show() {
        let contacts = Contacts::new([contact(1, "alice", Standing::Known)]);
        let look_alike = "al\u{200B}ice";
        assert!(contacts.name_claimed_by_other(&id(9), look_alike).is_some(), "a zero-width space hides nothing");
        assert!(contacts.name_claimed_by_other(&id(9), "ALICE\u{202E}").is_some());
        assert!(contacts.name_claimed_by_other(&id(9), "Ali\u{0301}ce").is_none(), "another letter");
        let decomposed = Contacts::new([contact(1, "Zoé", Standing::Known)]);
        assert!(decomposed.name_claimed_by_other(&id(9), "Zoe\u{0301}").is_some(), "the same name, typed another way");
    }

    #[test]
    fn a_blocked_devices_name_is_not_protected() {
        let contacts = Contacts::new([contact(1, "printer", Standing::Blocked)]);
        assert_eq!(contacts.name_claimed_by_other(&id(2), "printer"), None);
    }

    #[test]
    fn a_claim_is_announced_once_and_again_only_after_it_ended() {
        let mut contacts = Contacts::new([contact(1, "alice", Standing::Known)]);
        let mut claims = NameClaims::default();
        let impostor = id(9);
        let claim = claims.check(impostor, "alice", &contacts);
        assert_eq!(claim.map(|c| (c.peer, c.known)), Some((impostor, id(1))));
        assert_eq!(claims.check(impostor, "alice", &contacts), None, "the same claim, already announced");
        assert_eq!(claims.check(impostor, "mallory", &contacts), None, "no longer claims it");
        assert!(claims.check(impostor, "Alice", &contacts).is_some(), "claims it again");
        claims.gone(&impostor);
        assert!(claims.check(impostor, "alice", &contacts).is_some(), "back after it left");

        // A stranger's name that becomes a known device's name: claimed from then on.
        assert_eq!(claims.check(id(7), "bob", &contacts), None);
        contacts = Contacts::new([contact(1, "alice", Standing::Known), contact(2, "bob", Standing::Trusted)]);
        assert_eq!(claims.check(id(7), "bob", &contacts).map(|c| c.known), Some(id(2)));
        assert_eq!(claims.check(id(2), "bob", &contacts), None, "bob's own name");
    }
}
