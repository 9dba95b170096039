// For the Prisma 7 CLI where its native engine is available (e.g. `npx prisma migrate deploy
// --config tools/prisma/prisma.config.ts`). Offline, use migrate.mjs beside this file instead:
// it runs the same schema engine as WebAssembly.
import { defineConfig, env } from "prisma/config";

export default defineConfig({
  schema: "../../schema.prisma",
  migrations: { path: "../../migrations" },
  datasource: { url: env("DATABASE_URL") },
});
