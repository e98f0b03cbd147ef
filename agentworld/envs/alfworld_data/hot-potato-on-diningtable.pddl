;; task: heat some potato and put it in diningtable
;; A kitchen: the potato is in the closed fridge; the microwave heats it.
(define (problem hot-potato-on-diningtable)
    (:domain alfred)
    (:objects
        agent1 - agent
        loc_bar_start loc_bar_1 loc_bar_2 loc_bar_3 loc_bar_4 - location
        DiningTable_bar_1 Fridge_bar_1 Microwave_bar_1 StoveBurner_bar_1 - receptacle
        Potato_bar_1 Pan_bar_1 Lettuce_bar_1 - object
        DiningTableType FridgeType MicrowaveType StoveBurnerType - rtype
        PotatoType PanType LettuceType - otype
    )
    (:init
        (= (total-cost) 0)
        (atLocation agent1 loc_bar_start)
        (receptacleAtLocation DiningTable_bar_1 loc_bar_1)
        (receptacleAtLocation Fridge_bar_1 loc_bar_2)
        (receptacleAtLocation Microwave_bar_1 loc_bar_3)
        (receptacleAtLocation StoveBurner_bar_1 loc_bar_4)
        (receptacleType DiningTable_bar_1 DiningTableType)
        (receptacleType Fridge_bar_1 FridgeType)
        (receptacleType Microwave_bar_1 MicrowaveType)
        (receptacleType StoveBurner_bar_1 StoveBurnerType)
        (openable Fridge_bar_1)
        (openable Microwave_bar_1)
        (objectType Potato_bar_1 PotatoType)
        (objectType Pan_bar_1 PanType)
        (objectType Lettuce_bar_1 LettuceType)
        (pickupable Potato_bar_1)
        (pickupable Pan_bar_1)
        (pickupable Lettuce_bar_1)
        (isReceptacleObject Pan_bar_1)
        (heatable Potato_bar_1)
        (coolable Potato_bar_1)
        (coolable Lettuce_bar_1)
        (cleanable Potato_bar_1)
        (cleanable Pan_bar_1)
        (inReceptacle Potato_bar_1 Fridge_bar_1)
        (objectAtLocation Potato_bar_1 loc_bar_2)
        (inReceptacle Lettuce_bar_1 Fridge_bar_1)
        (objectAtLocation Lettuce_bar_1 loc_bar_2)
        (inReceptacle Pan_bar_1 StoveBurner_bar_1)
        (objectAtLocation Pan_bar_1 loc_bar_4)
        (canContain DiningTableType PotatoType)
        (canContain DiningTableType PanType)
        (canContain DiningTableType LettuceType)
        (canContain FridgeType PotatoType)
        (canContain FridgeType LettuceType)
        (canContain FridgeType PanType)
        (canContain MicrowaveType PotatoType)
        (canContain StoveBurnerType PanType)
    )
    (:goal
        (exists (?r - receptacle ?o - object)
            (and (heatable ?o) (objectType ?o PotatoType) (receptacleType ?r DiningTableType)
                 (isHot ?o) (inReceptacle ?o ?r)))
    )
)
