// Certificates made at test time with openssl: a CA, a server certificate for 127.0.0.1 (IP SAN)
// signed by it, a CA bundle (the system's roots plus the test CA) for SSL_CERT_FILE, and a
// self-signed signing certificate for the token server.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export const SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt";

export interface TestCA {
  dir: string;
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  /** The system bundle (when present) followed by the test CA: what SSL_CERT_FILE names. */
  bundle: string;
  /** The test CA's PEM, for the harness's own https requests. */
  caPem: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/** A CA and a server certificate for 127.0.0.1 and localhost, valid for two days. */
export function makeCA(dir: string): TestCA {
  mkdirSync(dir, { recursive: true });
  openssl(
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.crt",
      "-days",
      "2",
      "-subj",
      "/CN=Charliecloud test CA",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ],
    dir,
  );
  openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"], dir);
  writeFileSync(
    join(dir, "server.ext"),
    [
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "basicConstraints=CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment",
      "extendedKeyUsage=serverAuth",
      "",
    ].join("\n"),
  );
  openssl(
    [
      "x509",
      "-req",
      "-in",
      "server.csr",
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      "server.crt",
      "-days",
      "2",
      "-extfile",
      "server.ext",
    ],
    dir,
  );
  const caPem = readFileSync(join(dir, "ca.crt"), "utf8");
  const system = existsSync(SYSTEM_BUNDLE) ? readFileSync(SYSTEM_BUNDLE, "utf8") : "";
  const bundle = join(dir, "bundle.crt");
  writeFileSync(bundle, `${system}${system && !system.endsWith("\n") ? "\n" : ""}${caPem}`);
  return {
    dir,
    caCert: join(dir, "ca.crt"),
    caKey: join(dir, "ca.key"),
    serverCert: join(dir, "server.crt"),
    serverKey: join(dir, "server.key"),
    bundle,
    caPem,
  };
}

export interface SigningCert {
  cert: string;
  key: string;
  certPem: string;
  keyPem: string;
}

/** A self-signed RSA certificate whose key signs tokens; the registry trusts it as a root. */
export function makeSigningCert(dir: string): SigningCert {
  mkdirSync(dir, { recursive: true });
  openssl(
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "token.key",
      "-out",
      "token.crt",
      "-days",
      "2",
      "-subj",
      "/CN=token",
    ],
    dir,
  );
  return {
    cert: join(dir, "token.crt"),
    key: join(dir, "token.key"),
    certPem: readFileSync(join(dir, "token.crt"), "utf8"),
    keyPem: readFileSync(join(dir, "token.key"), "utf8"),
  };
}
