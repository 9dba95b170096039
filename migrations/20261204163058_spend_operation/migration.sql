-- AlterTable
ALTER TABLE "spend_logs" ADD COLUMN     "operation" TEXT NOT NULL DEFAULT 'chat';
