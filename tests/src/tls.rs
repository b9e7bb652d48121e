//! Throwaway certificate authorities for the TLS tests: a CA made when the
//! test starts, and server certificates it signs for chosen names and
//! validity periods.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use tandem_server::TlsIdentity;

/// A certificate authority that exists only for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate signed by a [`TestCa`].
pub struct ServerCert {
    /// The chain and key, for the server.
    pub identity: TlsIdentity,
    /// The certificate's DER, to compute its pin.
    pub der: Vec<u8>,
}

/// How long a server certificate is valid.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From 2020 to 2120.
    Current,
    /// From 2001 to 2002: expired.
    Expired,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let issuer = CertifiedIssuer::self_signed(params, key).unwrap_or_else(|e| panic!("{e}"));
        TestCa { issuer }
    }

    /// The CA's certificate as PEM: what a device adds to its trusted
    /// roots.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server_cert(&self, names: &[&str], validity: Validity) -> ServerCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap_or_else(|e| panic!("{e}"));
        params
            .distinguished_name
            .push(DnType::CommonName, "tandem test server");
        let (not_before, not_after) = match validity {
            Validity::Current => (date_time_ymd(2020, 1, 1), date_time_ymd(2120, 1, 1)),
            Validity::Expired => (date_time_ymd(2001, 1, 1), date_time_ymd(2002, 1, 1)),
        };
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("{e}"));
        ServerCert {
            identity: TlsIdentity {
                cert_chain_pem: cert.pem().into_bytes(),
                key_pem: key.serialize_pem().into_bytes(),
            },
            der: cert.der().to_vec(),
        }
    }

    /// A server certificate for `127.0.0.1` and `localhost`, valid now.
    pub fn localhost(&self) -> ServerCert {
        self.server_cert(&["127.0.0.1", "localhost"], Validity::Current)
    }
}
