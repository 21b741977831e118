//! `tracer certs`: the CA and the one certificate every tracer of a cluster shares for the
//! peer service, optionally printed as the Kubernetes Secret deploy/ mounts.
//!
//! One certificate for all nodes keeps the Secret a plain DaemonSet mount; what it proves is
//! "this is one of the cluster's tracers", which is all the peer service asks. The CA key
//! (`ca.key`) stays where it was generated: it is needed only to issue the next certificate
//! (`--renew`) and is never put in the Secret.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

use super::tls::{CA_FILE, CERT_FILE, KEY_FILE, SERVER_NAME};

/// The CA's private key file (never in the Secret).
pub const CA_KEY_FILE: &str = "ca.key";

/// `tracer certs` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, ca.key, tls.crt and tls.key to (created if missing). Existing
    /// files are not overwritten unless --renew.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Keep the CA in DIR (ca.crt, ca.key) and issue a new certificate from it: tracers that
    /// still hold the old certificate keep talking to those with the new one.
    #[arg(long)]
    pub renew: bool,
    /// Also trust the CA certificates in FILE (appended to ca.crt): the first step of moving
    /// to a new CA (see the README, "Cross-node verdicts"). Repeatable.
    #[arg(long, value_name = "FILE")]
    pub trust: Vec<PathBuf>,
    /// Validity of the certificate, days (the CA's is ten times as long).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Print a Kubernetes Secret with ca.crt, tls.crt and tls.key under this name on stdout
    /// (for `kubectl apply -f -`).
    #[arg(long, value_name = "NAME")]
    pub secret: Option<String>,
    /// Namespace of the Secret.
    #[arg(long, default_value = "tracer-system", requires = "secret")]
    pub namespace: String,
}

/// Sets `p` valid from today to `days` from now (whole UTC days).
fn validity(p: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    let day = |from_now: u32| -> anyhow::Result<jiff::civil::Date> {
        Ok(jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(24 * i64::from(from_now)))
            .context("date out of range")?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date())
    };
    let ymd = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(
            i32::from(d.year()),
            u8::try_from(d.month()).unwrap_or(1),
            u8::try_from(d.day()).unwrap_or(1),
        )
    };
    p.not_before = ymd(day(0)?);
    p.not_after = ymd(day(days)?);
    Ok(())
}

fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The CA's parameters (also what a renewal rebuilds the issuer from).
fn ca_params(days: u32) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "tracer peer CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, days.saturating_mul(10))?;
    Ok(p)
}

/// Runs `tracer certs`.
pub fn main(args: &CertsArgs) -> anyhow::Result<()> {
    let dir = &args.out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_crt = dir.join(CA_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let (ca_pem, issuer) = if args.renew {
        let key_pem = read(&ca_key).context("--renew needs the CA made by an earlier run")?;
        let pem = read(&ca_crt)?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{}: not a private key", ca_key.display()))?;
        if CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .is_none_or(|c| c.is_err())
        {
            bail!("{}: no certificate", ca_crt.display());
        }
        // The issuer is named and identified as when the CA was made: same name, same key.
        (pem, Issuer::new(ca_params(args.days)?, key))
    } else {
        for f in [CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE] {
            if dir.join(f).exists() {
                bail!(
                    "{} exists: use --renew to issue a new certificate from that CA, or another --out",
                    dir.join(f).display()
                );
            }
        }
        let key = KeyPair::generate()?;
        let params = ca_params(args.days)?;
        let cert = params.self_signed(&key)?;
        write(&ca_key, &key.serialize_pem(), true)?;
        (cert.pem(), Issuer::new(params, key))
    };
    let mut bundle = ca_pem;
    for extra in &args.trust {
        let pem = read(extra)?;
        let n = CertificateDer::pem_slice_iter(pem.as_bytes())
            .filter(Result::is_ok)
            .count();
        if n == 0 {
            bail!("{}: no certificate to trust in it", extra.display());
        }
        if !bundle.contains(pem.trim()) {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(pem.trim_end());
            bundle.push('\n');
        }
    }
    write(&ca_crt, &bundle, false)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, SERVER_NAME);
    leaf.distinguished_name = dn;
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut leaf, args.days)?;
    leaf.use_authority_key_identifier_extension = true;
    let cert = leaf.signed_by(&leaf_key, &issuer)?;
    write(&dir.join(CERT_FILE), &cert.pem(), false)?;
    write(&dir.join(KEY_FILE), &leaf_key.serialize_pem(), true)?;
    // What was written must load as the daemon loads it.
    super::tls::load(dir).context("checking the new material")?;
    eprintln!(
        "wrote {}, {} (keep it: --renew needs it; it is not part of the Secret), {} and {} (valid {} days)",
        ca_crt.display(),
        ca_key.display(),
        dir.join(CERT_FILE).display(),
        dir.join(KEY_FILE).display(),
        args.days
    );
    if let Some(name) = &args.secret {
        print!("{}", secret_manifest(name, &args.namespace, dir)?);
    }
    Ok(())
}

/// A Kubernetes Secret (type kubernetes.io/tls) with the three files of `dir`, as YAML.
pub fn secret_manifest(name: &str, namespace: &str, dir: &Path) -> anyhow::Result<String> {
    let block = |file: &str| -> anyhow::Result<String> {
        let text = read(&dir.join(file))?;
        Ok(text
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>())
    };
    Ok(format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    app.kubernetes.io/name: tracer\ntype: kubernetes.io/tls\nstringData:\n  {CA_FILE}: |\n{}  {CERT_FILE}: |\n{}  {KEY_FILE}: |\n{}",
        block(CA_FILE)?,
        block(CERT_FILE)?,
        block(KEY_FILE)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tracer-certs-{name}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn args(out: &Path) -> CertsArgs {
        CertsArgs {
            out: out.to_owned(),
            renew: false,
            trust: Vec::new(),
            days: 30,
            secret: None,
            namespace: "tracer-system".into(),
        }
    }

    #[test]
    fn generated_material_loads_renews_and_refuses_to_overwrite() {
        let dir = tmp("gen");
        main(&args(&dir)).expect("generates");
        super::super::tls::load(&dir).expect("loads");
        let err = main(&args(&dir)).expect_err("refuses to overwrite");
        assert!(format!("{err:#}").contains("--renew"), "{err:#}");
        let old_cert = read(&dir.join(CERT_FILE)).expect("cert");
        let old_ca = read(&dir.join(CA_FILE)).expect("ca");
        let mut renew = args(&dir);
        renew.renew = true;
        main(&renew).expect("renews");
        assert_ne!(read(&dir.join(CERT_FILE)).expect("cert"), old_cert);
        assert_eq!(read(&dir.join(CA_FILE)).expect("ca"), old_ca, "same CA");
        let key_mode = std::fs::metadata(dir.join(KEY_FILE))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("key file");
        assert_eq!(key_mode, 0o600);
        let manifest = secret_manifest("tracer-peer-tls", "tracer-system", &dir).expect("yaml");
        assert!(
            manifest.contains("kind: Secret") && manifest.contains("  tls.key: |\n    -----BEGIN")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn trusting_another_ca_appends_it() {
        let old = tmp("old");
        let new = tmp("new");
        main(&args(&old)).expect("old");
        let mut a = args(&new);
        a.trust = vec![old.join(CA_FILE)];
        main(&a).expect("new");
        let bundle = read(&new.join(CA_FILE)).expect("bundle");
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        super::super::tls::load(&new).expect("loads");
        let _ = std::fs::remove_dir_all(&old);
        let _ = std::fs::remove_dir_all(&new);
    }
}
