/*
 * Every cap of the sbx wire protocol and of the programs that speak it, in one place.
 * Nothing read from the wire sizes an allocation until it is checked against one of these.
 * PROTOCOL.md's limits table is the normative copy; keep the two in step.
 */
#ifndef SBX_LIMITS_H
#define SBX_LIMITS_H

/* Protocol versions this build speaks; hello agrees on the lower of the two peers' highest. */
#define SBX_PROTO_VERSION     1
#define SBX_PROTO_MIN_VERSION 1

/* Framing: a 4-byte big-endian length, then that many bytes holding one msgpack value. */
#define SBX_FRAME_HDR 4u
#define SBX_FRAME_MAX (4u << 20)

/* Decoder caps for one message (checked by a pre-scan before msgpack-c sees the bytes). */
#define SBX_MSG_MAX_DEPTH   32u
#define SBX_MSG_MAX_OBJECTS 65536u

/* Streams. */
#define SBX_STREAM_WINDOW (1u << 20) /* initial credit a sender holds, per stream */
/* hello recv_window: the smallest a client may ask. A walk entry (§17.4) goes out whole, and is
 * at most about 14 KiB (an 8 KiB path, a name, an error with its path): a client granting at
 * half its window must always leave room for one. */
#define SBX_RECV_WINDOW_MIN     (64u << 10)
#define SBX_UPLOAD_EXTRA_CREDIT (3u << 20)   /* granted at once on a transfer.upload stream */
#define SBX_STREAM_CHUNK_MAX    (256u << 10) /* largest payload of one stream-data frame */
#define SBX_STREAM_DATA_HDR_MAX 16u          /* frame length + [3, stream, bin32 header] */

/* Strings and arrays in requests. */
#define SBX_METHOD_MAX       64u
#define SBX_PATH_MAX         4096u
#define SBX_ARGV_MAX         4096u
#define SBX_ARG_MAX          (128u << 10)
#define SBX_ENV_MAX          4096u
#define SBX_ENV_NAME_MAX     256u
#define SBX_ENV_VAL_MAX      (128u << 10)
#define SBX_ENV_BYTES_MAX    (1u << 20) /* total size of the base environment */
#define SBX_GROUPS_MAX       64u
#define SBX_TAG_MAX          256u
#define SBX_USER_MAX         256u /* proc.spawn / repl.start user name */
#define SBX_PTY_TERM_MAX     64u  /* proc.spawn pty.term */
#define SBX_TOKEN_MAX        256u
#define SBX_CAPS_MAX         64u  /* hello: capabilities a client may list */
#define SBX_HELLO_CAP_MAX    64u  /* hello: bytes of one capability name */
#define SBX_HELLO_CLIENT_MAX 256u /* hello: bytes of the client name */

/* Agent-wide caps. */
#define SBX_MAX_CONNS      64u          /* unix and vsock connections (TCP: below) */
#define SBX_MAX_PENDING    4096u        /* outstanding requests per connection */
#define SBX_MAX_STREAMS    4096u        /* open streams per connection */
#define SBX_MAX_PROCS      1024u        /* processes tracked: running + exit records */
#define SBX_REPLAY_MIN     (64u << 10)  /* smallest replay ring per output stream (§10) */
#define SBX_CONN_DATA_HIGH (2u << 20)   /* queued output above which stream reads pause */
#define SBX_CONN_DATA_LOW  (512u << 10) /* ...and below which they resume */
#define SBX_CONN_OUTQ_MAX  (8u << 20)   /* control output memory per connection before close */
#define SBX_CONN_RESULTS_MAX                                                                       \
    8u /* REPL results beyond that bound at once (agent_conn_send_result) */
#define SBX_AGENT_BUFS_MAX        48u /* stream-chunk buffers in flight, agent-wide (12 MiB) */
#define SBX_AGENT_BUFS_LOW        32u /* ...output pipes waiting for one resume below this */
#define SBX_DRAIN_MS_DEFAULT      500u
#define SBX_DRAIN_MS_MAX          60000u
#define SBX_KILL_GRACE_MS_DEFAULT 2000u
#define SBX_SPAWN_EXEC_MS         5000u /* a child not at execve by then is killed (TIMEOUT) */
#define SBX_SPAWN_THREADS_MAX     16u   /* children starting at once; the next ones queue */

/* Connections (PROTOCOL.md section 2.1). TCP is the one listener a workload inside the guest can
 * reach, so it has a pool of its own and can never take a unix or vsock slot. Queued control
 * output is counted as the memory it holds (allocations and their headers), not its bytes. */
#define SBX_MAX_CONNS_TCP        16u          /* TCP connections, before and after hello */
#define SBX_MAX_CONNS_TCP_HELLO  8u           /* ...of which still waiting for hello */
#define SBX_HELLO_TIMEOUT_MS     10000u       /* accept to hello (unix, vsock, TCP): then closed */
#define SBX_HELLO_TIMEOUT_MS_MAX 3600000u     /* ...as --hello-timeout may set it */
#define SBX_CONN_CTL_HIGH        (2u << 20)   /* control output memory: stop reading requests */
#define SBX_CONN_CTL_LOW         (512u << 10) /* ...and read again below this */

/* The fs family (PROTOCOL.md §17). */
#define SBX_FS_HANDLES_MAX        1024u  /* open file handles per connection */
#define SBX_FS_WATCHES_MAX        64u    /* fs.watch watches per connection */
#define SBX_FS_CURSORS_MAX        64u    /* live fs.readdir cursors per connection */
#define SBX_FS_CURSOR_IDLE_MS     60000u /* an unused readdir cursor expires after this */
#define SBX_FS_READDIR_DEFAULT    1024u  /* fs.readdir entries per page: default ... */
#define SBX_FS_READDIR_MAX        8192u  /* ... and cap */
#define SBX_MAX_PACKS             4u     /* concurrent pack.create jobs per connection */
#define SBX_PACK_EXCLUDE_MAX      1024u  /* pack.create exclude patterns */
#define SBX_PACK_IGNORE_FILES_MAX 16u    /* pack.create ignore_files names */
#define SBX_FS_PATTERNS_MAX       64u    /* entries of walk/glob filter lists */
#define SBX_FS_REGEX_MAX          4096u  /* bytes of one walk regular expression */
#define SBX_FS_NAME_MAX           255u   /* mktemp prefix / suffix */
#define SBX_FS_WALK_OPEN_MAX      256u  /* directories one walk holds open (its depth below root) */
#define SBX_FS_WALK_BATCH         2048u /* entries a walk produces before yielding to the loop */

/* REPL sessions (PROTOCOL.md section 16). */
#define SBX_REPL_CODE_MAX     (1u << 20)  /* repl.eval code */
#define SBX_REPL_OUT_MAX      (1u << 20)  /* stdout, stderr each, per eval (non-streaming) */
#define SBX_REPL_VALUE_MAX    (1u << 20)  /* value */
#define SBX_REPL_ERROR_MAX    (64u << 10) /* error_text */
#define SBX_REPL_START_MS     10000u      /* interpreter ready after repl.start */
#define SBX_REPL_INTR_MS      2000u       /* ready again after a timeout's interrupt, or killed */
#define SBX_REPL_CLOSE_MS     2000u       /* SIGTERM to SIGKILL on repl.close */
#define SBX_REPL_CTL_LINE_MAX 64u         /* a driver's control header line */

/* Workload resource limits (PROTOCOL.md §14.10, capability "limits"): proc.spawn / repl.start
 * params, and the agent's bookkeeping of the cgroups it creates for them. */
#define SBX_MEMORY_MAX_MIN (1u << 20) /* memory_max: at least 1 MiB (bytes) */
#define SBX_PIDS_MAX_MAX   4194304u   /* pids_max: 1 .. the kernel's PID_MAX_LIMIT */
#define SBX_CPU_MAX_MAX    100000u    /* cpu_max: 1 .. 100000 percent of one CPU */
#define SBX_CPU_PERIOD_US  100000u    /* the cpu.max period a cpu_max percentage is taken of */
#define SBX_CG_LINGER_MAX  4096u      /* cgroups the agent keeps for processes left behind */

#endif /* SBX_LIMITS_H */
