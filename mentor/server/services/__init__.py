"""The server's business logic, below its routes: what a request does to jobs (services.jobs) and
models (services.models), whichever API shape it came in. A route parses its request, calls a service
and shapes the answer (OpenAI's, the cloud's, mentor's own); routes never import each other."""
