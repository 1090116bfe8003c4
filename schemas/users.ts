// The engine's users file (--users FILE, docs/security.md): who may call the API and in which
// role. Only the SHA-256 of each token is stored, so the file is no secret to read, only to write.
import { z } from 'zod';

export const RoleSchema = z.enum(['viewer', 'operator', 'alerts']);
export type Role = z.infer<typeof RoleSchema>;

export const UserNameSchema = z.string().regex(/^[A-Za-z0-9._@-]{1,64}$/, 'a user name is 1-64 of A-Z a-z 0-9 . _ @ -');

export const UserSchema = z.strictObject({
  name: UserNameSchema,
  role: RoleSchema,
  token_sha256: z.string().regex(/^[0-9a-f]{64}$/, 'token_sha256 is 64 lower-case hex digits (sha256 of the token)'),
});
export type User = z.infer<typeof UserSchema>;

export const UsersFileSchema = z.array(UserSchema).superRefine((users, ctx) => {
  const seen = new Set<string>();
  for (const [i, u] of users.entries()) {
    if (seen.has(u.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `user ${u.name} is listed twice` });
    seen.add(u.name);
  }
});
