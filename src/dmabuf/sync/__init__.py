"""Layer 1 — synchronisation: fences (array, chain, unwrap), sync files, ww_mutex, dma_resv.

Kernel: drivers/dma-buf/dma-fence*.c, sync_file.c, sw_sync.c, dma-resv.c, kernel/locking/ww_mutex.h.
"""

# A plain list of re-exports; each module's owner appends only their own lines.
from dmabuf.sync.dma_fence import MAX_SCHEDULE_TIMEOUT as MAX_SCHEDULE_TIMEOUT
from dmabuf.sync.dma_fence import DmaFence as DmaFence
from dmabuf.sync.dma_fence import DmaFenceCb as DmaFenceCb
from dmabuf.sync.dma_fence import DmaFenceFlag as DmaFenceFlag
from dmabuf.sync.dma_fence import DmaFenceOps as DmaFenceOps
from dmabuf.sync.dma_fence import Interrupts as Interrupts
from dmabuf.sync.dma_fence import dma_fence_allocate_private_stub as dma_fence_allocate_private_stub
from dmabuf.sync.dma_fence import dma_fence_begin_signalling as dma_fence_begin_signalling
from dmabuf.sync.dma_fence import dma_fence_context_alloc as dma_fence_context_alloc
from dmabuf.sync.dma_fence import dma_fence_end_signalling as dma_fence_end_signalling
from dmabuf.sync.dma_fence import dma_fence_get_stub as dma_fence_get_stub
from dmabuf.sync.dma_fence import dma_fence_is_container as dma_fence_is_container
from dmabuf.sync.dma_fence import dma_fence_is_later as dma_fence_is_later
from dmabuf.sync.dma_fence import dma_fence_is_later_or_same as dma_fence_is_later_or_same
from dmabuf.sync.dma_fence import dma_fence_later as dma_fence_later
from dmabuf.sync.dma_fence import dma_fence_wait_any_timeout as dma_fence_wait_any_timeout
from dmabuf.sync.dma_fence import dma_fence_was_initialized as dma_fence_was_initialized
from dmabuf.sync.dma_fence_array import DmaFenceArray as DmaFenceArray
from dmabuf.sync.dma_fence_array import dma_fence_array_create as dma_fence_array_create
from dmabuf.sync.dma_fence_array import dma_fence_array_first as dma_fence_array_first
from dmabuf.sync.dma_fence_array import dma_fence_array_next as dma_fence_array_next
from dmabuf.sync.dma_fence_array import dma_fence_is_array as dma_fence_is_array
from dmabuf.sync.dma_fence_array import dma_fence_match_context as dma_fence_match_context
from dmabuf.sync.dma_fence_array import to_dma_fence_array as to_dma_fence_array
from dmabuf.sync.dma_fence_chain import DmaFenceChain as DmaFenceChain
from dmabuf.sync.dma_fence_chain import dma_fence_chain_contained as dma_fence_chain_contained
from dmabuf.sync.dma_fence_chain import dma_fence_chain_find_seqno as dma_fence_chain_find_seqno
from dmabuf.sync.dma_fence_chain import dma_fence_chain_for_each as dma_fence_chain_for_each
from dmabuf.sync.dma_fence_chain import dma_fence_chain_init as dma_fence_chain_init
from dmabuf.sync.dma_fence_chain import dma_fence_chain_walk as dma_fence_chain_walk
from dmabuf.sync.dma_fence_chain import dma_fence_is_chain as dma_fence_is_chain
from dmabuf.sync.dma_fence_chain import to_dma_fence_chain as to_dma_fence_chain
from dmabuf.sync.dma_fence_unwrap import dma_fence_dedup_array as dma_fence_dedup_array
from dmabuf.sync.dma_fence_unwrap import dma_fence_unwrap_for_each as dma_fence_unwrap_for_each
from dmabuf.sync.dma_fence_unwrap import dma_fence_unwrap_merge as dma_fence_unwrap_merge
from dmabuf.sync.dma_resv import DmaResv as DmaResv
from dmabuf.sync.dma_resv import DmaResvIter as DmaResvIter
from dmabuf.sync.dma_resv import DmaResvUsage as DmaResvUsage
from dmabuf.sync.dma_resv import reservation_ww_class as reservation_ww_class
from dmabuf.sync.dma_resv import usage_rw as usage_rw
from dmabuf.sync.sw_sync import SwSyncPt as SwSyncPt
from dmabuf.sync.sw_sync import SwSyncTimeline as SwSyncTimeline
from dmabuf.sync.sync_file import SyncFenceInfo as SyncFenceInfo
from dmabuf.sync.sync_file import SyncFile as SyncFile
from dmabuf.sync.sync_file import SyncFileInfo as SyncFileInfo
from dmabuf.sync.sync_file import sync_file_create as sync_file_create
from dmabuf.sync.sync_file import sync_file_get_fence as sync_file_get_fence
from dmabuf.sync.ww_mutex import WwAcquireCtx as WwAcquireCtx
from dmabuf.sync.ww_mutex import WwClass as WwClass
from dmabuf.sync.ww_mutex import WwMutex as WwMutex
