//! Client certificates as credentials: the names a certificate carries, and the table that maps
//! names to consumers.
//!
//! The TLS handshake has already verified the certificate chain, its validity period and its
//! key usage. This model only reads the subject common names (CN) and the DNS, email and URI
//! subject alternative names (RFC 5280 section 4.2.1.6) of the end-entity certificate, and looks
//! them up. A certificate whose names belong to two different consumers matches none, so that a
//! configuration mistake cannot let one consumer act as another.

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_config::CertificateName;
use x509_cert::Certificate;
use x509_cert::der::oid::db::rfc4519::COMMON_NAME;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// Reads the subject CNs and the DNS, email and URI subject alternative names of a DER
/// certificate, alternative names first. Fails when the certificate does not parse.
///
/// NOTE: a CN encoded as BMPString or UniversalString, which RFC 5280 allows only for
/// certificates of old CAs, or as a TeletexString that is not UTF-8, is skipped, so such a
/// certificate can match only by its alternative names.
pub fn certificate_names(der: &[u8]) -> Result<Vec<CertificateName>, String> {
    let certificate =
        Certificate::from_der(der).map_err(|error| format!("invalid certificate: {error}"))?;
    let tbs = &certificate.tbs_certificate;
    let mut names = Vec::new();
    let alternative_names = tbs
        .get::<SubjectAltName>()
        .map_err(|error| format!("invalid subject alternative name extension: {error}"))?;
    if let Some((_, SubjectAltName(general_names))) = alternative_names {
        for general_name in general_names {
            match general_name {
                GeneralName::DnsName(name) => names.push(CertificateName::dns(name.as_str())),
                GeneralName::Rfc822Name(address) => {
                    names.push(CertificateName::email(address.as_str()));
                }
                GeneralName::UniformResourceIdentifier(uri) => {
                    names.push(CertificateName::Uri(uri.as_str().to_string()));
                }
                _ => {}
            }
        }
    }
    for relative_name in tbs.subject.0.iter() {
        for attribute in relative_name.0.iter() {
            if attribute.oid != COMMON_NAME {
                continue;
            }
            let text = match attribute.value.tag() {
                Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
                    std::str::from_utf8(attribute.value.value()).ok()
                }
                _ => None,
            };
            if let Some(text) = text {
                names.push(CertificateName::SubjectCn(text.to_string()));
            }
        }
    }
    Ok(names)
}

/// The result of looking up a certificate's names.
#[derive(Debug, PartialEq, Eq)]
pub enum CertificateMatch<'t> {
    /// Every configured name of the certificate belongs to this consumer; `name` is the first.
    Consumer {
        consumer: &'t Arc<str>,
        name: &'t CertificateName,
    },
    /// No name of the certificate is configured.
    Unknown,
    /// The certificate's names belong to more than one consumer.
    Ambiguous,
}

/// Certificate names of every consumer, built with each snapshot.
#[derive(Debug, Default)]
pub struct CertificateTable {
    owners: HashMap<CertificateName, Arc<str>>,
}

impl CertificateTable {
    /// Maps `name` to `consumer`. Returns the other consumer when the name already maps to one;
    /// the table then keeps the first owner.
    pub fn insert(&mut self, name: CertificateName, consumer: Arc<str>) -> Result<(), Arc<str>> {
        match self.owners.get(&name) {
            Some(owner) if *owner != consumer => Err(owner.clone()),
            Some(_) => Ok(()),
            None => {
                self.owners.insert(name, consumer);
                Ok(())
            }
        }
    }

    /// Removes `name`, so that it matches no consumer.
    pub fn remove(&mut self, name: &CertificateName) {
        self.owners.remove(name);
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Finds the consumer that the certificate `names` identify.
    pub fn find<'t>(&'t self, names: &[CertificateName]) -> CertificateMatch<'t> {
        let mut found: Option<(&'t CertificateName, &'t Arc<str>)> = None;
        for name in names {
            let Some((key, owner)) = self.owners.get_key_value(name) else {
                continue;
            };
            match found {
                None => found = Some((key, owner)),
                Some((_, first)) if first != owner => return CertificateMatch::Ambiguous,
                Some(_) => {}
            }
        }
        match found {
            Some((name, consumer)) => CertificateMatch::Consumer { consumer, name },
            None => CertificateMatch::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn certificate(cn: Option<&str>, alternative_names: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        // rcgen's default subject has a CN of its own.
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = alternative_names;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn names_read_from_certificate() {
        let der = certificate(
            Some("alice"),
            vec![
                SanType::DnsName("Alice.Clients.Test".try_into().unwrap()),
                SanType::Rfc822Name("Alice@Example.COM".try_into().unwrap()),
                SanType::URI("spiffe://example.com/alice".try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ],
        );
        let names = certificate_names(&der).unwrap();
        assert_eq!(
            names,
            vec![
                CertificateName::Dns("alice.clients.test".into()),
                CertificateName::Email("Alice@example.com".into()),
                CertificateName::Uri("spiffe://example.com/alice".into()),
                CertificateName::SubjectCn("alice".into()),
            ]
        );
    }

    #[test]
    fn certificate_without_names() {
        let der = certificate(None, Vec::new());
        assert_eq!(certificate_names(&der).unwrap(), Vec::new());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(certificate_names(b"not a certificate").is_err());
        assert!(certificate_names(&[]).is_err());
    }

    #[test]
    fn table_finds_owner() {
        let mut table = CertificateTable::default();
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        table
            .insert(CertificateName::SubjectCn("alice".into()), alice.clone())
            .unwrap();
        table
            .insert(CertificateName::dns("alice.test"), alice.clone())
            .unwrap();
        table
            .insert(CertificateName::dns("bob.test"), bob.clone())
            .unwrap();
        assert_eq!(
            table.insert(CertificateName::dns("bob.test"), alice.clone()),
            Err(bob.clone())
        );

        let presented = [
            CertificateName::dns("alice.test"),
            CertificateName::SubjectCn("alice".into()),
        ];
        assert_eq!(
            table.find(&presented),
            CertificateMatch::Consumer {
                consumer: &alice,
                name: &presented[0],
            }
        );
        assert_eq!(
            table.find(&[CertificateName::dns("carol.test")]),
            CertificateMatch::Unknown
        );
        assert_eq!(table.find(&[]), CertificateMatch::Unknown);
        assert_eq!(
            table.find(&[
                CertificateName::SubjectCn("alice".into()),
                CertificateName::dns("bob.test"),
            ]),
            CertificateMatch::Ambiguous
        );
    }

    #[test]
    fn removed_name_matches_nothing() {
        let mut table = CertificateTable::default();
        let name = CertificateName::Uri("spiffe://example.com/a".into());
        table.insert(name.clone(), Arc::from("a")).unwrap();
        table.remove(&name);
        assert_eq!(table.find(&[name]), CertificateMatch::Unknown);
        assert!(table.is_empty());
    }
}
