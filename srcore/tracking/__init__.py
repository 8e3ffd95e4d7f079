"""MLflow tracking, model packaging, registration and champion promotion."""
