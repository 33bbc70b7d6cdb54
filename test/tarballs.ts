// Crafting tarballs byte by byte, tricks included, with node-tar's Header (no sanitizing).
import { writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { Header } from "tar";

export type MemberType = "File" | "Directory" | "SymbolicLink" | "Link" | "FIFO" | "CharacterDevice";

export interface Member {
  path: string;
  type?: MemberType;
  body?: string;
  linkpath?: string;
  mode?: number;
}

function block(m: Member): Buffer {
  const type = m.type ?? "File";
  const body = Buffer.from(m.body ?? "");
  const h = new Header({
    path: m.path,
    type,
    mode: m.mode ?? (type === "Directory" ? 0o755 : 0o644),
    uid: 1234,
    gid: 1234,
    size: type === "File" ? body.length : 0,
    mtime: new Date("2020-01-02T03:04:05Z"),
    linkpath: m.linkpath,
  });
  const head = Buffer.alloc(512);
  h.encode(head, 0);
  if (type !== "File") return head;
  return Buffer.concat([head, body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}

/** The bytes of a tar archive of members, with its end-of-archive marker. */
export function tarBytes(members: Member[]): Buffer {
  return Buffer.concat([...members.map(block), Buffer.alloc(1024)]);
}

/** Writes members as a tarball at path, gzipped if the name says so. */
export function writeTar(path: string, members: Member[]): string {
  const bytes = tarBytes(members);
  writeFileSync(path, /\.(tgz|gz)$/.test(path) ? gzipSync(bytes) : bytes);
  return path;
}

/** A tiny image: bin, etc, usr, with a few files. */
export function imageMembers(prefix = ""): Member[] {
  return [
    { path: `${prefix}bin/`, type: "Directory" },
    { path: `${prefix}bin/hello`, body: "#!/bin/sh\necho hello\n", mode: 0o755 },
    { path: `${prefix}etc/`, type: "Directory" },
    { path: `${prefix}etc/motd`, body: "hi\n" },
    { path: `${prefix}usr/`, type: "Directory" },
    { path: `${prefix}usr/share/doc`, body: "doc\n" },
  ];
}
