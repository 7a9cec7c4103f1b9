//! Throwaway certificate authorities for TLS tests, made with the `openssl` command: a CA,
//! and server certificates it signs for the names given. Removed when dropped.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A certificate authority in a directory of its own.
pub struct Ca {
    dir: PathBuf,
    name: String,
}

/// A server's certificate and key, as PEM files.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `openssl req`'s arguments for a new P-256 key, unencrypted.
const NEW_P256_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ca {
    /// A new CA named `name` (P-256 keys, valid for two days).
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "nat-ca-{name}-{}-{}",
            std::process::id(),
            super::redis_server::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                ["req", "-x509"].as_slice(),
                &NEW_P256_KEY,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name} test CA"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        Self {
            dir,
            name: name.to_owned(),
        }
    }

    /// The CA's certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `names` (`DNS:localhost,IP:127.0.0.1`), signed by this CA;
    /// also good as a client certificate (Redis Cluster nodes present theirs to each other).
    pub fn issue(&self, file: &str, names: &str) -> ServerCert {
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={names}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .unwrap();
        let (key, csr, cert) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.pem"),
        );
        openssl(
            &self.dir,
            &[
                ["req", "-new"].as_slice(),
                &NEW_P256_KEY,
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={} server", self.name),
                ],
            ]
            .concat(),
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
            ],
        );
        ServerCert {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
