-- CreateTable
CREATE TABLE "teams" (
    "id" TEXT NOT NULL,
    "alias" TEXT,
    "models" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "max_budget" DECIMAL(24,12),
    "spend" DECIMAL(24,12) NOT NULL DEFAULT 0,
    "budget_duration" TEXT,
    "budget_reset_at" TIMESTAMPTZ(6),
    "rpm_limit" INTEGER,
    "tpm_limit" INTEGER,
    "max_parallel_requests" INTEGER,
    "model_rpm_limit" JSONB NOT NULL DEFAULT '{}',
    "model_tpm_limit" JSONB NOT NULL DEFAULT '{}',
    "blocked" BOOLEAN NOT NULL DEFAULT false,
    "metadata" JSONB NOT NULL DEFAULT '{}',
    "budget_id" TEXT,
    "created_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "teams_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "users" (
    "id" TEXT NOT NULL,
    "email" TEXT,
    "alias" TEXT,
    "role" TEXT NOT NULL DEFAULT 'internal_user',
    "models" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "max_budget" DECIMAL(24,12),
    "spend" DECIMAL(24,12) NOT NULL DEFAULT 0,
    "budget_duration" TEXT,
    "budget_reset_at" TIMESTAMPTZ(6),
    "rpm_limit" INTEGER,
    "tpm_limit" INTEGER,
    "max_parallel_requests" INTEGER,
    "metadata" JSONB NOT NULL DEFAULT '{}',
    "created_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "users_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "team_memberships" (
    "team_id" TEXT NOT NULL,
    "user_id" TEXT NOT NULL,
    "role" TEXT NOT NULL DEFAULT 'user',
    "created_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "team_memberships_pkey" PRIMARY KEY ("team_id","user_id")
);

-- CreateTable
CREATE TABLE "virtual_keys" (
    "token_hash" TEXT NOT NULL,
    "key_name" TEXT NOT NULL,
    "key_alias" TEXT,
    "team_id" TEXT,
    "user_id" TEXT,
    "models" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "max_budget" DECIMAL(24,12),
    "spend" DECIMAL(24,12) NOT NULL DEFAULT 0,
    "budget_duration" TEXT,
    "budget_reset_at" TIMESTAMPTZ(6),
    "rpm_limit" INTEGER,
    "tpm_limit" INTEGER,
    "max_parallel_requests" INTEGER,
    "model_rpm_limit" JSONB NOT NULL DEFAULT '{}',
    "model_tpm_limit" JSONB NOT NULL DEFAULT '{}',
    "expires" TIMESTAMPTZ(6),
    "blocked" BOOLEAN NOT NULL DEFAULT false,
    "metadata" JSONB NOT NULL DEFAULT '{}',
    "budget_id" TEXT,
    "created_by" TEXT,
    "created_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "virtual_keys_pkey" PRIMARY KEY ("token_hash")
);

-- CreateTable
CREATE TABLE "budgets" (
    "id" TEXT NOT NULL,
    "max_budget" DECIMAL(24,12),
    "soft_budget" DECIMAL(24,12),
    "budget_duration" TEXT,
    "budget_reset_at" TIMESTAMPTZ(6),
    "rpm_limit" INTEGER,
    "tpm_limit" INTEGER,
    "max_parallel_requests" INTEGER,
    "created_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "budgets_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "spend_logs" (
    "id" TEXT NOT NULL,
    "request_id" TEXT NOT NULL,
    "key_hash" TEXT,
    "team_id" TEXT,
    "user_id" TEXT,
    "model" TEXT NOT NULL,
    "deployment_id" TEXT,
    "provider_model" TEXT,
    "prompt_tokens" INTEGER NOT NULL DEFAULT 0,
    "completion_tokens" INTEGER NOT NULL DEFAULT 0,
    "total_tokens" INTEGER NOT NULL DEFAULT 0,
    "spend" DECIMAL(24,12) NOT NULL DEFAULT 0,
    "status" TEXT NOT NULL,
    "cache_hit" BOOLEAN NOT NULL DEFAULT false,
    "stream" BOOLEAN NOT NULL DEFAULT false,
    "error_code" TEXT,
    "start_time" TIMESTAMPTZ(6) NOT NULL,
    "end_time" TIMESTAMPTZ(6) NOT NULL,
    "metadata" JSONB NOT NULL DEFAULT '{}',

    CONSTRAINT "spend_logs_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "daily_spend" (
    "day" DATE NOT NULL,
    "key_hash" TEXT NOT NULL DEFAULT '',
    "team_id" TEXT NOT NULL DEFAULT '',
    "user_id" TEXT NOT NULL DEFAULT '',
    "model" TEXT NOT NULL,
    "requests" INTEGER NOT NULL DEFAULT 0,
    "failed_requests" INTEGER NOT NULL DEFAULT 0,
    "prompt_tokens" BIGINT NOT NULL DEFAULT 0,
    "completion_tokens" BIGINT NOT NULL DEFAULT 0,
    "spend" DECIMAL(24,12) NOT NULL DEFAULT 0,

    CONSTRAINT "daily_spend_pkey" PRIMARY KEY ("day","key_hash","team_id","user_id","model")
);

-- CreateTable
CREATE TABLE "audit_logs" (
    "id" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "actor" TEXT NOT NULL,
    "action" TEXT NOT NULL,
    "object_type" TEXT NOT NULL,
    "object_id" TEXT NOT NULL,
    "before" JSONB,
    "after" JSONB,

    CONSTRAINT "audit_logs_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "model_deployments" (
    "id" TEXT NOT NULL,
    "model_name" TEXT NOT NULL,
    "params" JSONB NOT NULL DEFAULT '{}',
    "model_info" JSONB NOT NULL DEFAULT '{}',
    "created_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "model_deployments_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "teams_alias_key" ON "teams"("alias");

-- CreateIndex
CREATE INDEX "teams_budget_reset_at_idx" ON "teams"("budget_reset_at");

-- CreateIndex
CREATE UNIQUE INDEX "users_email_key" ON "users"("email");

-- CreateIndex
CREATE INDEX "users_budget_reset_at_idx" ON "users"("budget_reset_at");

-- CreateIndex
CREATE INDEX "team_memberships_user_id_idx" ON "team_memberships"("user_id");

-- CreateIndex
CREATE UNIQUE INDEX "virtual_keys_key_alias_key" ON "virtual_keys"("key_alias");

-- CreateIndex
CREATE INDEX "virtual_keys_team_id_idx" ON "virtual_keys"("team_id");

-- CreateIndex
CREATE INDEX "virtual_keys_user_id_idx" ON "virtual_keys"("user_id");

-- CreateIndex
CREATE INDEX "virtual_keys_budget_reset_at_idx" ON "virtual_keys"("budget_reset_at");

-- CreateIndex
CREATE INDEX "spend_logs_key_hash_start_time_idx" ON "spend_logs"("key_hash", "start_time");

-- CreateIndex
CREATE INDEX "spend_logs_team_id_start_time_idx" ON "spend_logs"("team_id", "start_time");

-- CreateIndex
CREATE INDEX "spend_logs_user_id_start_time_idx" ON "spend_logs"("user_id", "start_time");

-- CreateIndex
CREATE INDEX "spend_logs_start_time_idx" ON "spend_logs"("start_time");

-- CreateIndex
CREATE INDEX "spend_logs_request_id_idx" ON "spend_logs"("request_id");

-- CreateIndex
CREATE INDEX "daily_spend_team_id_day_idx" ON "daily_spend"("team_id", "day");

-- CreateIndex
CREATE INDEX "daily_spend_key_hash_day_idx" ON "daily_spend"("key_hash", "day");

-- CreateIndex
CREATE INDEX "audit_logs_object_type_object_id_idx" ON "audit_logs"("object_type", "object_id");

-- CreateIndex
CREATE INDEX "audit_logs_created_at_idx" ON "audit_logs"("created_at");

-- CreateIndex
CREATE INDEX "model_deployments_model_name_idx" ON "model_deployments"("model_name");

-- AddForeignKey
ALTER TABLE "teams" ADD CONSTRAINT "teams_budget_id_fkey" FOREIGN KEY ("budget_id") REFERENCES "budgets"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "team_memberships" ADD CONSTRAINT "team_memberships_team_id_fkey" FOREIGN KEY ("team_id") REFERENCES "teams"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "team_memberships" ADD CONSTRAINT "team_memberships_user_id_fkey" FOREIGN KEY ("user_id") REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "virtual_keys" ADD CONSTRAINT "virtual_keys_team_id_fkey" FOREIGN KEY ("team_id") REFERENCES "teams"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "virtual_keys" ADD CONSTRAINT "virtual_keys_user_id_fkey" FOREIGN KEY ("user_id") REFERENCES "users"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "virtual_keys" ADD CONSTRAINT "virtual_keys_budget_id_fkey" FOREIGN KEY ("budget_id") REFERENCES "budgets"("id") ON DELETE SET NULL ON UPDATE CASCADE;
