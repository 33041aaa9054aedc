"""What outlives the process, and who hears about it.

  sql       `Store`: peers, inventory, events and settings in SQLite or PostgreSQL
  events    `EventBus`: publishes events to the store, SSE subscribers and webhooks
  webhooks  `WebhookDispatcher`: signed HTTP POSTs of events, with retries
  ha        `Leadership`: one leader per switch among replicas sharing a PostgreSQL store
"""
