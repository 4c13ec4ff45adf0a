-- The schema as the first release (0.1.0) created it with create_all (postgresql).

CREATE TABLE conversations (
	id VARCHAR(36) NOT NULL,
	project_id VARCHAR(64),
	title TEXT NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	CONSTRAINT pk_conversations PRIMARY KEY (id)
);

CREATE TABLE chat_messages (
	id VARCHAR(36) NOT NULL,
	conversation_id VARCHAR(36) NOT NULL,
	project_id VARCHAR(64),
	role VARCHAR(16) NOT NULL,
	content TEXT NOT NULL,
	model VARCHAR(200),
	token_count INTEGER,
	run_id VARCHAR(36),
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	CONSTRAINT pk_chat_messages PRIMARY KEY (id),
	CONSTRAINT ck_chat_messages_role CHECK (role IN ('system', 'user', 'assistant')),
	CONSTRAINT fk_chat_messages_conversation_id_conversations FOREIGN KEY(conversation_id) REFERENCES conversations (id)
);

CREATE INDEX ix_chat_messages_conversation_id ON chat_messages (conversation_id);

CREATE INDEX ix_chat_messages_conversation_id_created_at ON chat_messages (conversation_id, created_at);

CREATE INDEX ix_chat_messages_created_at ON chat_messages (created_at);

CREATE TABLE workflow_runs (
	id VARCHAR(36) NOT NULL,
	workflow VARCHAR(64) NOT NULL,
	workflow_sha256 VARCHAR(64) NOT NULL,
	conversation_id VARCHAR(36),
	status VARCHAR(16) NOT NULL,
	current_state VARCHAR(64),
	model VARCHAR(200),
	error_class VARCHAR(32),
	error_message TEXT,
	started_at TIMESTAMP WITH TIME ZONE NOT NULL,
	finished_at TIMESTAMP WITH TIME ZONE,
	CONSTRAINT pk_workflow_runs PRIMARY KEY (id),
	CONSTRAINT ck_workflow_runs_status CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
	CONSTRAINT fk_workflow_runs_conversation_id_conversations FOREIGN KEY(conversation_id) REFERENCES conversations (id)
);

CREATE INDEX ix_workflow_runs_conversation_id ON workflow_runs (conversation_id);

CREATE INDEX ix_workflow_runs_started_at ON workflow_runs (started_at);

CREATE TABLE llm_usage (
	id VARCHAR(36) NOT NULL,
	conversation_id VARCHAR(36) NOT NULL,
	message_id VARCHAR(36) NOT NULL,
	run_id VARCHAR(36),
	project_id VARCHAR(64),
	model VARCHAR(200) NOT NULL,
	requested_model VARCHAR(200) NOT NULL,
	generation_id VARCHAR(200),
	prompt_tokens INTEGER NOT NULL,
	completion_tokens INTEGER NOT NULL,
	total_tokens INTEGER NOT NULL,
	cached_tokens INTEGER NOT NULL,
	cost_usd NUMERIC(20, 9) NOT NULL,
	cost_source VARCHAR(16) NOT NULL,
	latency_ms INTEGER NOT NULL,
	attempts INTEGER NOT NULL,
	request_timestamp TIMESTAMP WITH TIME ZONE NOT NULL,
	CONSTRAINT pk_llm_usage PRIMARY KEY (id),
	CONSTRAINT ck_llm_usage_cost_source CHECK (cost_source IN ('provider', 'price_table', 'unknown')),
	CONSTRAINT fk_llm_usage_conversation_id_conversations FOREIGN KEY(conversation_id) REFERENCES conversations (id),
	CONSTRAINT fk_llm_usage_message_id_chat_messages FOREIGN KEY(message_id) REFERENCES chat_messages (id),
	CONSTRAINT uq_llm_usage_generation_id UNIQUE (generation_id)
);

CREATE INDEX ix_llm_usage_conversation_id ON llm_usage (conversation_id);

CREATE INDEX ix_llm_usage_request_timestamp ON llm_usage (request_timestamp);

CREATE TABLE run_events (
	run_id VARCHAR(36) NOT NULL,
	seq INTEGER NOT NULL,
	from_state VARCHAR(64) NOT NULL,
	event VARCHAR(32) NOT NULL,
	to_state VARCHAR(64) NOT NULL,
	model VARCHAR(200),
	attempt INTEGER,
	error_class VARCHAR(32),
	wait_s FLOAT,
	at TIMESTAMP WITH TIME ZONE NOT NULL,
	CONSTRAINT pk_run_events PRIMARY KEY (run_id, seq),
	CONSTRAINT fk_run_events_run_id_workflow_runs FOREIGN KEY(run_id) REFERENCES workflow_runs (id)
);
