#!/bin/sh
# One-shot bucket init for MLflow's artifact store (compose service `bucket-init`, amazon/aws-cli image).
# Idempotent: an existing bucket is left alone, so `docker compose up` can re-run it every time.
# Retries because "healthy" only means the S3 port answers; the first requests can still fail.
set -eu

: "${S3_ENDPOINT_URL:?S3_ENDPOINT_URL must be set}"
: "${S3_BUCKET:?S3_BUCKET must be set}"
region="${AWS_DEFAULT_REGION:-us-east-1}"
attempts="${BUCKET_INIT_ATTEMPTS:-10}"

i=1
while :; do
    if aws --endpoint-url "$S3_ENDPOINT_URL" s3api head-bucket --bucket "$S3_BUCKET" >/dev/null 2>&1; then
        echo "bucket-init: bucket $S3_BUCKET already exists"
        exit 0
    fi
    if aws --endpoint-url "$S3_ENDPOINT_URL" s3api create-bucket --bucket "$S3_BUCKET" --region "$region"; then
        echo "bucket-init: created bucket $S3_BUCKET"
        exit 0
    fi
    if [ "$i" -ge "$attempts" ]; then
        echo "bucket-init: could not create bucket $S3_BUCKET at $S3_ENDPOINT_URL after $attempts attempts" >&2
        exit 1
    fi
    i=$((i + 1))
    sleep 2
done
