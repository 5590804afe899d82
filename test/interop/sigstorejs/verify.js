#!/usr/bin/env node
// Verifies one Hallmark bundle with sigstore-js alone (@sigstore/bundle and
// @sigstore/verify from the npm registry, pinned in package-lock.json): no
// Hallmark code is in the verification path. test/e2e runs it.
//
//   node verify.js --bundle B --trusted-root R --artifact A --san SPIFFE_ID
//
// sigstore-js checks the bundle (@sigstore/bundle's strict reader), the
// RFC 3161 timestamp (one, from a timestamp authority of the trusted root),
// the signing certificate's chain to a certificate authority of the trusted
// root at that time, the transparency-log entry (its body against the
// envelope, its inclusion proof, the checkpoint signed by a log of the
// trusted root) and the DSSE signature; then the certificate's SAN against
// --san. The options are the ones docs/log.md gives: ctlogThreshold 0,
// since Hallmark certificates carry no SCT (a private CA logs to no
// certificate transparency log), and no issuer extension in the policy.
//
// sigstore-js verifies the signature over the envelope, not what the
// payload says: as every in-toto consumer does, this script then reads the
// verified statement and requires the artifact's SHA-256 among its
// subjects. Exit 0: verified; 1: refused (the reason on stderr); 2: usage.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const { bundleFromJSON } = require('@sigstore/bundle');
const { TrustedRoot } = require('@sigstore/protobuf-specs');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

function args(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i];
    if (!key.startsWith('--') || i + 1 >= argv.length) {
      return null;
    }
    out[key.slice(2)] = argv[i + 1];
  }
  for (const need of ['bundle', 'trusted-root', 'artifact', 'san']) {
    if (!out[need]) {
      return null;
    }
  }
  return out;
}

function main() {
  const a = args(process.argv.slice(2));
  if (!a) {
    process.stderr.write('usage: verify.js --bundle B --trusted-root R --artifact A --san SPIFFE_ID\n');
    return 2;
  }
  try {
    const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(a.bundle, 'utf8')));
    const root = TrustedRoot.fromJSON(JSON.parse(fs.readFileSync(a['trusted-root'], 'utf8')));
    const verifier = new Verifier(toTrustMaterial(root), {
      ctlogThreshold: 0,
      tlogThreshold: 1,
      timestampThreshold: 1,
    });
    const signer = verifier.verify(toSignedEntity(bundle), { subjectAlternativeName: a.san });

    const statement = JSON.parse(Buffer.from(bundle.content.dsseEnvelope.payload).toString('utf8'));
    const digest = crypto.createHash('sha256').update(fs.readFileSync(a.artifact)).digest('hex');
    const subjects = Array.isArray(statement.subject) ? statement.subject : [];
    if (!subjects.some((s) => s && s.digest && s.digest.sha256 === digest)) {
      throw new Error(`artifact sha256:${digest} is no subject of the statement`);
    }
    process.stdout.write(JSON.stringify({ verified: true, san: signer.identity.subjectAlternativeName }) + '\n');
    return 0;
  } catch (err) {
    process.stderr.write(`refused: ${err.code ? err.code + ': ' : ''}${err.message}\n`);
    return 1;
  }
}

process.exitCode = main();
