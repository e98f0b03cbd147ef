;; task: look at book under the desklamp
;; A bedroom: take the book from the bed, then turn on the desklamp on the desk.
(define (problem book-under-desklamp)
    (:domain alfred)
    (:objects
        agent1 - agent
        loc_bar_start loc_bar_1 loc_bar_2 loc_bar_3 loc_bar_4 - location
        Bed_bar_1 Desk_bar_1 Drawer_bar_1 Shelf_bar_1 - receptacle
        Book_bar_1 DeskLamp_bar_1 CellPhone_bar_1 Pencil_bar_1 - object
        BedType DeskType DrawerType ShelfType - rtype
        BookType DeskLampType CellPhoneType PencilType - otype
    )
    (:init
        (= (total-cost) 0)
        (atLocation agent1 loc_bar_start)
        (receptacleAtLocation Bed_bar_1 loc_bar_1)
        (receptacleAtLocation Desk_bar_1 loc_bar_2)
        (receptacleAtLocation Drawer_bar_1 loc_bar_3)
        (receptacleAtLocation Shelf_bar_1 loc_bar_4)
        (receptacleType Bed_bar_1 BedType)
        (receptacleType Desk_bar_1 DeskType)
        (receptacleType Drawer_bar_1 DrawerType)
        (receptacleType Shelf_bar_1 ShelfType)
        (openable Drawer_bar_1)
        (objectType Book_bar_1 BookType)
        (objectType DeskLamp_bar_1 DeskLampType)
        (objectType CellPhone_bar_1 CellPhoneType)
        (objectType Pencil_bar_1 PencilType)
        (pickupable Book_bar_1)
        (pickupable CellPhone_bar_1)
        (pickupable Pencil_bar_1)
        (toggleable DeskLamp_bar_1)
        (inReceptacle Book_bar_1 Bed_bar_1)
        (objectAtLocation Book_bar_1 loc_bar_1)
        (inReceptacle CellPhone_bar_1 Bed_bar_1)
        (objectAtLocation CellPhone_bar_1 loc_bar_1)
        (inReceptacle DeskLamp_bar_1 Desk_bar_1)
        (objectAtLocation DeskLamp_bar_1 loc_bar_2)
        (inReceptacle Pencil_bar_1 Drawer_bar_1)
        (objectAtLocation Pencil_bar_1 loc_bar_3)
        (canContain BedType BookType)
        (canContain BedType CellPhoneType)
        (canContain DeskType BookType)
        (canContain DeskType CellPhoneType)
        (canContain DeskType PencilType)
        (canContain DrawerType BookType)
        (canContain DrawerType CellPhoneType)
        (canContain DrawerType PencilType)
        (canContain ShelfType BookType)
        (canContain ShelfType CellPhoneType)
        (canContain ShelfType PencilType)
    )
    (:goal
        (and
            (exists (?ot - object ?r - receptacle ?a - agent ?l - location)
                (and (objectType ?ot DeskLampType) (toggleable ?ot) (isToggled ?ot)
                     (receptacleAtLocation ?r ?l) (atLocation ?a ?l) (inReceptacle ?ot ?r)))
            (exists (?o - object ?a - agent)
                (and (objectType ?o BookType) (holds ?a ?o))))
    )
)
