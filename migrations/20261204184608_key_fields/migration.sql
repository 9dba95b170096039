-- AlterTable
ALTER TABLE "virtual_keys" ADD COLUMN     "aliases" JSONB NOT NULL DEFAULT '{}',
ADD COLUMN     "config" JSONB NOT NULL DEFAULT '{}',
ADD COLUMN     "model_max_budget" JSONB NOT NULL DEFAULT '{}',
ADD COLUMN     "permissions" JSONB NOT NULL DEFAULT '{}',
ADD COLUMN     "soft_budget" DECIMAL(24,12);
