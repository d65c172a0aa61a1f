//! TLS test harness: a CA made for one test ([`TestCa`]) issuing server certificates,
//! and private TLS-only servers on free ports: PostgreSQL ([`TlsPostgres`], `ssl=on` and
//! only `hostssl` connections allowed), Redis ([`TlsRedis`], `--tls-port` only), and a TLS
//! terminator ([`TlsProxy`]) for a server that cannot serve TLS itself (tansu 0.6 accepts
//! `--cert`/`--key` but serves plain TCP).
//!
//! The servers are the Debian packages the tests already use (`scripts/test-deps.sh`);
//! a missing one panics naming what to install, so a test never passes without it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::{free_port, unique_name};

/// A certificate authority made for one test, with its files in a directory of its own
/// (removed on drop).
pub struct TestCa {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The certificate (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new CA named `name` (its common name), written to `ca.pem`.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name("messenger-tls"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("a self-signed CA");
        std::fs::write(dir.join("ca.pem"), issuer.pem()).expect("writing ca.pem");
        Self { dir, issuer }
    }

    /// The CA certificate (PEM), what clients are configured to trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The directory holding this CA's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues a server certificate for `hosts` (DNS names or IP addresses), written as
    /// `<name>.pem` and `<name>.key`.
    pub fn issue(&self, name: &str, hosts: &[&str]) -> ServerCert {
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let mut params = CertificateParams::new(hosts).expect("server certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a server key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        let cert_file = self.dir.join(format!("{name}.pem"));
        let key_file = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("writing the certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("writing the key");
        ServerCert {
            cert_file,
            key_file,
        }
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until 127.0.0.1:`port` accepts connections, panicking after `within`.
fn wait_for_port(port: u16, within: Duration, what: &str, log: Option<&Path>) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + within;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            let log = log
                .and_then(|path| std::fs::read_to_string(path).ok())
                .unwrap_or_default();
            panic!("{what} did not listen on port {port} within {within:?}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A private PostgreSQL that accepts only TLS connections (`hostssl`, password auth),
/// with the certificate given, on a free port. Stopped and removed on drop.
pub struct TlsPostgres {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

/// The password of the `postgres` user of a [`TlsPostgres`].
pub const TLS_POSTGRES_PASSWORD: &str = "tls-test-password";

impl TlsPostgres {
    /// Makes a cluster (`initdb`) and starts it with `ssl=on` serving `cert`. As root,
    /// PostgreSQL runs as the `postgres` user (it refuses to run as root).
    pub fn start(cert: &ServerCert) -> Self {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(unique_name("messenger-tls-pg"));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster");
        let server_cert = dir.join("server.crt");
        let server_key = dir.join("server.key");
        std::fs::copy(&cert.cert_file, &server_cert).expect("copying the certificate");
        std::fs::copy(&cert.key_file, &server_key).expect("copying the key");
        let password_file = dir.join("password");
        std::fs::write(&password_file, TLS_POSTGRES_PASSWORD).expect("writing the password");
        set_mode(&server_key, 0o600);
        let as_postgres = running_as_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown of {} failed", dir.display());
        }
        let postgres = Self {
            port: free_port(),
            dir,
            bin,
            as_postgres,
        };
        let data = postgres.dir.join("data");
        postgres.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                password_file.as_os_str(),
                "--no-sync".as_ref(),
            ],
        );
        // Only TLS over TCP: a plain connection finds no pg_hba.conf entry.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("writing pg_hba.conf");
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c fsync=off",
            postgres.port,
            postgres.dir.display(),
            server_cert.display(),
            server_key.display(),
        );
        let log = postgres.dir.join("postgres.log");
        postgres.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        );
        wait_for_port(
            postgres.port,
            Duration::from_secs(30),
            "the TLS PostgreSQL",
            Some(&log),
        );
        postgres
    }

    /// Runs `tool` of the PostgreSQL installation (as `postgres` when root).
    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{tool} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres:<password>@<host>:<port>/<database>?<query>`, e.g. with
    /// `sslmode=verify-full&sslrootcert=...`.
    pub fn url(&self, host: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{TLS_POSTGRES_PASSWORD}@{host}:{}/{database}?{query}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let program = self.bin.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let _ = command
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` (`PG_BIN` wins).
fn postgres_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).expect(
        "no /usr/lib/postgresql/*/bin/initdb: install Debian's postgresql (scripts/test-deps.sh)",
    )
}

/// A private Redis serving only TLS (`--port 0 --tls-port`) with the certificate given,
/// on a free port. Killed on drop.
pub struct TlsRedis {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl TlsRedis {
    /// Starts `redis-server` with `cert` (clients are not asked for certificates).
    pub fn start(cert: &ServerCert, ca_file: &Path) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique_name("messenger-tls-redis"));
        std::fs::create_dir_all(&dir).expect("a directory for Redis");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&cert.cert_file)
            .arg("--tls-key-file")
            .arg(&cert.key_file)
            .arg("--tls-ca-cert-file")
            .arg(ca_file)
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (install Debian's redis-server): {e}")
            });
        wait_for_port(port, Duration::from_secs(20), "the TLS Redis", None);
        Self { port, child, dir }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `<scheme>://<host>:<port>`, e.g. `rediss://localhost:…`.
    pub fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Terminates TLS on a free port and forwards the plain bytes to `upstream`: a real TLS
/// endpoint in front of a server that has none (tansu). Runs on a thread of its own, so
/// blocking client calls in a test never starve it. Stopped on drop.
pub struct TlsProxy {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsProxy {
    /// Listens on 127.0.0.1 with `cert`, forwarding to `upstream`.
    pub fn start(cert: &ServerCert, upstream: SocketAddr) -> Self {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let chain = CertificateDer::pem_file_iter(&cert.cert_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .expect("the proxy's certificate");
        let key = PrivateKeyDer::from_pem_file(&cert.key_file).expect("the proxy's key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a TLS server configuration");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the proxy's runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let serve = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // A failed handshake (a client that distrusts us) just ends.
                            let Ok(mut client) = acceptor.accept(client).await else {
                                return;
                            };
                            let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await
                            else {
                                return;
                            };
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The port clients connect to with TLS.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
